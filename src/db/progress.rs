//! Synced course progress (`course_progress`): all of its SQL. A sync's effect (the
//! user's whole course set replaced, `progress.synced` in the outbox, the readiness mark)
//! commits in one transaction with the job that asked for it.

use time::OffsetDateTime;
use tokio_postgres::Transaction;

use super::{outbox, schedule};
use crate::actors::ports::ProgressSnapshot;
use crate::actors::readiness::ReadinessMark;
use crate::actors::upstream::{CourseStatus, UpstreamCourse};
use crate::actors::TopicKind;

/// Replaces the user's synced course progress, writes `progress.synced` to the outbox and
/// marks the readiness inputs changed.
pub async fn record(
    tx: &Transaction<'_>,
    t: &str,
    u: &str,
    courses: Vec<UpstreamCourse>,
) -> Result<ProgressSnapshot, tokio_postgres::Error> {
    let ids: Vec<&str> = courses.iter().map(|c| c.course_id.as_str()).collect();
    let titles: Vec<&str> = courses.iter().map(|c| c.title.as_str()).collect();
    let statuses: Vec<&str> = courses.iter().map(|c| status_str(c.status)).collect();
    let scores: Vec<Option<f64>> = courses.iter().map(|c| c.quiz_score).collect();
    let done: Vec<Option<OffsetDateTime>> = courses.iter().map(|c| c.completed_at).collect();
    if !courses.is_empty() {
        tx.execute(
            "insert into course_progress (tenant_id, user_id, course_id, title,
                                                          status, score, completed_at)
                             select $1, $2, * from unnest($3::text[], $4::text[], $5::text[],
                                                          $6::float8[], $7::timestamptz[])
                             on conflict (tenant_id, user_id, course_id) do update set
                                 title = excluded.title, status = excluded.status,
                                 score = excluded.score, completed_at = excluded.completed_at,
                                 synced_at = now()",
            &[&t, &u, &ids, &titles, &statuses, &scores, &done],
        )
        .await?;
    }
    // The platform's answer is the user's whole course set: courses no longer assigned go.
    tx.execute(
        "delete from course_progress
          where tenant_id = $1 and user_id = $2 and not (course_id = any($3::text[]))",
        &[&t, &u, &ids],
    )
    .await?;
    let synced: OffsetDateTime = tx.query_one("select now()", &[]).await?.get(0);
    let snapshot = ProgressSnapshot {
        user_id: u.to_owned(),
        courses,
        synced_at: Some(synced),
    };
    let payload = serde_json::json!({
        "type": "progress.synced", "tenantId": t, "userId": u,
        "courses": snapshot.courses, "syncedAt": snapshot.synced_at
            .and_then(|s| s.format(&time::format_description::well_known::Rfc3339).ok()),
    })
    .to_string();
    outbox::append(tx, t, TopicKind::Events, &[u], &[&payload], 0).await?;
    schedule::mark_changed(tx, t, ReadinessMark::ProgressSynced).await?;
    Ok(snapshot)
}

/// Records a quiz score as the user's latest score of the course (creating the course row
/// in progress when the platform has not synced it yet).
pub async fn record_score(
    tx: &Transaction<'_>,
    t: &str,
    u: &str,
    course: &str,
    score: f64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "insert into course_progress (tenant_id, user_id, course_id, title, status, score)
         values ($1, $2, $3, $3, 'in_progress', $4)
         on conflict (tenant_id, user_id, course_id) do update set score = excluded.score",
        &[&t, &u, &course, &score],
    )
    .await
    .map(|_| ())
}

/// The user's last synced progress, `None` when the user was never synced.
pub async fn read(
    tx: &Transaction<'_>,
    t: &str,
    u: &str,
) -> Result<Option<ProgressSnapshot>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select course_id, title, status, score, completed_at, synced_at
               from course_progress where tenant_id = $1 and user_id = $2
              order by course_id",
            &[&t, &u],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let synced_at = rows.iter().map(|r| r.get::<_, OffsetDateTime>(5)).max();
    Ok(Some(ProgressSnapshot {
        user_id: u.to_owned(),
        courses: rows.iter().map(row_to_course).collect(),
        synced_at,
    }))
}

fn status_str(s: CourseStatus) -> &'static str {
    match s {
        CourseStatus::NotStarted => "not_started",
        CourseStatus::InProgress => "in_progress",
        CourseStatus::Completed => "completed",
    }
}

fn row_to_course(r: &tokio_postgres::Row) -> UpstreamCourse {
    UpstreamCourse {
        course_id: r.get(0),
        title: r.get(1),
        status: match r.get::<_, &str>(2) {
            "completed" => CourseStatus::Completed,
            "in_progress" => CourseStatus::InProgress,
            _ => CourseStatus::NotStarted,
        },
        quiz_score: r.get(3),
        completed_at: r.get(4),
    }
}
