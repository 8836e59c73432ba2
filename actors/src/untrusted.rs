//! What the MindTickle platform answers is input like any other: checked before it is
//! used or stored. A score outside 0..=100, a course listed twice, a string PostgreSQL
//! cannot store (a NUL character) or an implausibly long one fails that one job with a
//! reason (`UpstreamError::Invalid`, not retried, counted by outcome); the tenant's other
//! jobs go on. The adapter bounds the answer's size and keeps user ids from changing the
//! request path ([`path_segment`]).

use std::collections::HashSet;

use crate::upstream::{CatalogCourse, RosterUser, UpstreamCourse, UpstreamError};

/// Longest id (course, user) accepted from the platform.
pub const MAX_ID_CHARS: usize = 256;
/// Longest free text (title, email, role) accepted from the platform.
pub const MAX_TEXT_CHARS: usize = 2_048;

fn invalid(msg: String) -> UpstreamError {
    UpstreamError::Invalid(msg)
}

fn text(field: &str, value: &str, max: usize) -> Result<(), UpstreamError> {
    if value.contains('\0') {
        return Err(invalid(format!("{field} contains a NUL character")));
    }
    if value.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    Ok(())
}

fn id(field: &str, value: &str) -> Result<(), UpstreamError> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    text(field, value, MAX_ID_CHARS)
}

fn unique<'a>(field: &str, ids: impl Iterator<Item = &'a str>) -> Result<(), UpstreamError> {
    let mut seen = HashSet::new();
    for i in ids {
        if !seen.insert(i) {
            return Err(invalid(format!("duplicate {field} {i:?}")));
        }
    }
    Ok(())
}

/// A user's courses.
pub fn check_courses(courses: &[UpstreamCourse]) -> Result<(), UpstreamError> {
    for c in courses {
        id("course id", &c.course_id)?;
        text("course title", &c.title, MAX_TEXT_CHARS)?;
        if let Some(s) = c.quiz_score {
            if !(0.0..=100.0).contains(&s) {
                return Err(invalid(format!(
                    "quiz score {s} of course {:?} is outside 0..100",
                    c.course_id
                )));
            }
        }
    }
    unique("course id", courses.iter().map(|c| c.course_id.as_str()))
}

/// The course catalog.
pub fn check_catalog(courses: &[CatalogCourse]) -> Result<(), UpstreamError> {
    for c in courses {
        id("course id", &c.id)?;
        text("course title", &c.title, MAX_TEXT_CHARS)?;
    }
    unique("course id", courses.iter().map(|c| c.id.as_str()))
}

/// The platform's roster.
pub fn check_roster(users: &[RosterUser]) -> Result<(), UpstreamError> {
    for u in users {
        id("user id", &u.id)?;
        for (f, v) in [("email", &u.email), ("role", &u.role)] {
            if let Some(v) = v {
                text(f, v, MAX_TEXT_CHARS)?;
            }
        }
    }
    unique("user id", users.iter().map(|u| u.id.as_str()))
}

/// One URL path segment from an id: every byte but the unreserved ones percent-encoded, so
/// `/`, `?`, `#` and `%` cannot change the request. `.` and `..` are refused: URL parsers
/// resolve them (even percent-encoded) as "this" and "parent" segment.
pub fn path_segment(raw: &str) -> Result<String, UpstreamError> {
    if raw.is_empty() || raw == "." || raw == ".." {
        return Err(invalid(format!(
            "user id {raw:?} cannot be a URL path segment"
        )));
    }
    Ok(raw
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::CourseStatus;

    fn course(id: &str, score: Option<f64>) -> UpstreamCourse {
        UpstreamCourse {
            course_id: id.into(),
            title: "t".into(),
            status: CourseStatus::Completed,
            quiz_score: score,
            completed_at: None,
        }
    }

    #[test]
    fn scores_duplicates_nul_and_length_fail_with_a_reason() {
        assert!(check_courses(&[course("c1", Some(0.0)), course("c2", Some(100.0))]).is_ok());
        for (bad, reason) in [
            (vec![course("c1", Some(100.5))], "outside 0..100"),
            (vec![course("c1", Some(-1.0))], "outside 0..100"),
            (vec![course("c1", Some(f64::NAN))], "outside 0..100"),
            (
                vec![course("c1", None), course("c1", None)],
                "duplicate course id",
            ),
            (vec![course("c\0", None)], "NUL"),
            (vec![course(&"x".repeat(300), None)], "longer than"),
            (vec![course("", None)], "empty"),
        ] {
            match check_courses(&bad) {
                Err(UpstreamError::Invalid(m)) => assert!(m.contains(reason), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let dup = [
            RosterUser {
                id: "u".into(),
                email: None,
                role: None,
                active: true,
            },
            RosterUser {
                id: "u".into(),
                email: None,
                role: None,
                active: false,
            },
        ];
        assert!(check_roster(&dup).is_err());
        assert!(check_catalog(&[CatalogCourse {
            id: "c".into(),
            title: "a\0".into()
        }])
        .is_err());
    }

    #[test]
    fn an_id_cannot_change_the_request_path() {
        assert_eq!(path_segment("a/b?c#d%e").unwrap(), "a%2Fb%3Fc%23d%25e");
        assert_eq!(path_segment("..x").unwrap(), "%2E%2Ex");
        assert!(path_segment("..").is_err());
        assert!(path_segment(".").is_err());
        assert!(path_segment("").is_err());
    }
}
