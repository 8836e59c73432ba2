//! Quiz submissions: validation of `POST /api/tenants/{t}/quiz-results` bodies and the
//! tenant-scoped write (submission, score in `course_progress`, `quiz.completed` outbox row)
//! in one transaction. Idempotent by `submissionId`; never cached.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::actors::ports::StoreError;
use crate::actors::readiness::ReadinessMark;
use crate::actors::TenantId;
use crate::actors::TopicKind;
use crate::db::{self, TenantScopedStore};
use crate::tenant_tx;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuizAnswer {
    pub question_id: String,
    pub selected: String,
    pub correct: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuizSubmission {
    pub submission_id: String,
    pub user_id: String,
    pub course_id: String,
    pub quiz_id: String,
    pub answers: Vec<QuizAnswer>,
    pub score: f64,
    #[serde(with = "time::serde::rfc3339")]
    pub submitted_at: OffsetDateTime,
}

/// A field-level validation failure (`field` names the offending field).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: &str) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses and validates a submission: ids non-empty, score within 0..100, answers present,
/// question ids unique, and the score consistent with the answers (within one point of the
/// share of correct answers).
pub fn parse(body: &[u8]) -> Result<QuizSubmission, Invalid> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let sub: QuizSubmission = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        invalid(&field, &e.inner().to_string())
    })?;
    for (field, v) in [
        ("submissionId", &sub.submission_id),
        ("userId", &sub.user_id),
        ("courseId", &sub.course_id),
        ("quizId", &sub.quiz_id),
    ] {
        if v.trim().is_empty() || v.len() > 256 {
            return Err(invalid(field, "must be 1 to 256 characters"));
        }
    }
    if !sub.score.is_finite() || !(0.0..=100.0).contains(&sub.score) {
        return Err(invalid("score", "must be between 0 and 100"));
    }
    if sub.answers.is_empty() || sub.answers.len() > 1000 {
        return Err(invalid("answers", "must hold 1 to 1000 answers"));
    }
    let mut seen = HashSet::new();
    for a in &sub.answers {
        if a.question_id.is_empty() || !seen.insert(a.question_id.as_str()) {
            return Err(invalid("answers", "questionId must be present and unique"));
        }
    }
    let correct = sub.answers.iter().filter(|a| a.correct).count() as f64;
    let expected = 100.0 * correct / sub.answers.len() as f64;
    if (expected - sub.score).abs() > 1.0 {
        return Err(invalid(
            "score",
            "does not match the share of correct answers",
        ));
    }
    Ok(sub)
}

/// What recording did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    New,
    /// The same submission was recorded before: nothing changed.
    Duplicate,
    /// The id was used before for different content.
    Conflict,
    /// The user is not in the tenant's roster.
    UnknownUser,
}

pub async fn record(
    store: &TenantScopedStore,
    tenant: &TenantId,
    sub: &QuizSubmission,
) -> Result<Recorded, StoreError> {
    let sub = sub.clone();
    tenant_tx!(store, tenant, |tx, t| {
                if !db::scim::exists(tx, t, &sub.user_id).await? {
                    return Ok(Recorded::UnknownUser);
                }
                let answers: Value = sub
                    .answers
                    .iter()
                    .map(|a| json!({"questionId": a.question_id, "selected": a.selected, "correct": a.correct}))
                    .collect();
                let inserted = tx
                    .execute(
                        "insert into quiz_submissions (tenant_id, submission_id, user_id, course_id,
                                                       quiz_id, answers, score, submitted_at)
                         values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict do nothing",
                        &[&t, &sub.submission_id, &sub.user_id, &sub.course_id, &sub.quiz_id,
                          &answers, &sub.score, &sub.submitted_at],
                    )
                    .await?;
                if inserted == 0 {
                    let same = tx
                        .query_opt(
                            "select 1 from quiz_submissions where tenant_id = $1 and submission_id = $2
                               and user_id = $3 and course_id = $4 and quiz_id = $5
                               and answers = $6 and score = $7 and submitted_at = $8",
                            &[&t, &sub.submission_id, &sub.user_id, &sub.course_id, &sub.quiz_id,
                              &answers, &sub.score, &sub.submitted_at],
                        )
                        .await?
                        .is_some();
                    return Ok(if same { Recorded::Duplicate } else { Recorded::Conflict });
                }
                db::progress::record_score(tx, t, &sub.user_id, &sub.course_id, sub.score).await?;
                let payload = json!({
                    "type": "quiz.completed", "tenantId": t, "submissionId": sub.submission_id,
                    "userId": sub.user_id, "courseId": sub.course_id, "quizId": sub.quiz_id,
                    "score": sub.score, "answers": answers,
                    "submittedAt": sub.submitted_at
                        .format(&time::format_description::well_known::Rfc3339).ok(),
                })
                .to_string();
                db::outbox::append(tx, t, TopicKind::Events, &[&sub.user_id], &[&payload], 0)
                    .await?;
                db::schedule::mark_changed(tx, t, ReadinessMark::QuizRecorded).await?;
                // The outbox row may be relayed by a consumer in another process.
                db::notify_tenant_work(tx, t).await?;
                Ok(Recorded::New)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(score: f64, answers: Value) -> Vec<u8> {
        json!({"submissionId": "s1", "userId": "u1", "courseId": "c1", "quizId": "q1",
               "answers": answers, "score": score, "submittedAt": "2026-11-01T10:00:00Z"})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn validates_and_names_the_field() {
        let two = json!([{"questionId": "a", "selected": "x", "correct": true},
                         {"questionId": "b", "selected": "y", "correct": false}]);
        assert!(parse(&body(50.0, two.clone())).is_ok());
        assert_eq!(parse(&body(90.0, two.clone())).unwrap_err().field, "score");
        assert_eq!(parse(&body(150.0, two)).unwrap_err().field, "score");
        assert_eq!(parse(&body(0.0, json!([]))).unwrap_err().field, "answers");
        let dup = json!([{"questionId": "a", "selected": "x", "correct": true},
                         {"questionId": "a", "selected": "y", "correct": true}]);
        assert_eq!(parse(&body(100.0, dup)).unwrap_err().field, "answers");
        let wrong_type = json!([{"questionId": "a", "selected": "x", "correct": "yes"}]);
        assert_eq!(
            parse(&body(100.0, wrong_type)).unwrap_err().field,
            "answers[0].correct"
        );
        assert_eq!(parse(b"{").unwrap_err().field, "body");
        let missing = br#"{"userId": "u1"}"#;
        assert!(parse(missing).is_err());
    }
}
