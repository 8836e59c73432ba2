//! What a SCIM answer holds of a resource, and which page of a list (RFC 7644 §3.4.2.4,
//! §3.4.2.5): `attributes` / `excludedAttributes` applied to a resource as stored, and
//! `startIndex` / `count` made safe. Pure, for the SCIM provider's read paths.
//!
//! `id`, `schemas` and `meta` are always returned; attributes the schema marks
//! `returned: never` (`password`) never are. Attribute names match in any case, with or
//! without their schema URN (`name.givenName`,
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`).

use serde_json::{Map, Value};

/// Attributes every answer holds whatever `attributes` / `excludedAttributes` say.
const ALWAYS: [&str; 3] = ["id", "schemas", "meta"];
/// Attributes no answer holds.
const NEVER: [&str; 1] = ["password"];
/// The most resources one page may hold, whatever `count` asks.
pub const MAX_PAGE: usize = 1000;

/// Which attributes to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projection {
    /// Everything returned by default.
    All,
    /// Only these (and the always-returned ones).
    Only(Vec<Selector>),
    /// Everything but these.
    Except(Vec<Selector>),
}

/// One selected attribute: an optional extension URN, a name and an optional sub-attribute,
/// lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub schema: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid attribute list: {0}")]
pub struct ProjectionError(pub String);

impl Projection {
    /// From the `attributes` and `excludedAttributes` parameters (comma-separated; both at
    /// once is refused). `core` is the resource's core schema URN (a name may carry it).
    pub fn parse(
        attributes: Option<&str>,
        excluded: Option<&str>,
        core: &str,
    ) -> Result<Self, ProjectionError> {
        let list = |raw: &str| -> Result<Vec<Selector>, ProjectionError> {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| selector(s, core))
                .collect()
        };
        match (attributes, excluded) {
            (Some(_), Some(_)) => Err(ProjectionError(
                "attributes and excludedAttributes cannot be used together".into(),
            )),
            (Some(a), None) if !a.trim().is_empty() => Ok(Projection::Only(list(a)?)),
            (None, Some(e)) if !e.trim().is_empty() => Ok(Projection::Except(list(e)?)),
            _ => Ok(Projection::All),
        }
    }

    /// The resource as the answer holds it.
    pub fn apply(&self, resource: &Value, extensions: &[&str]) -> Value {
        let Value::Object(obj) = resource else {
            return resource.clone();
        };
        let mut out = Map::new();
        for (key, value) in obj {
            let lower = key.to_ascii_lowercase();
            if NEVER.contains(&lower.as_str()) {
                continue;
            }
            if ALWAYS.contains(&lower.as_str()) {
                out.insert(key.clone(), value.clone());
                continue;
            }
            let ext = extensions
                .iter()
                .find(|e| e.eq_ignore_ascii_case(key))
                .map(|e| e.to_ascii_lowercase());
            let kept = match &ext {
                // An extension's object: projected attribute by attribute.
                Some(urn) => self.project_extension(urn, value).map(|v| (key.clone(), v)),
                None => self.project(None, &lower, value).map(|v| (key.clone(), v)),
            };
            if let Some((k, v)) = kept {
                out.insert(k, v);
            }
        }
        Value::Object(out)
    }

    fn project_extension(&self, urn: &str, value: &Value) -> Option<Value> {
        let Value::Object(inner) = value else {
            return self.project(Some(urn), "", value);
        };
        let mut out = Map::new();
        for (k, v) in inner {
            if let Some(v) = self.project(Some(urn), &k.to_ascii_lowercase(), v) {
                out.insert(k.clone(), v);
            }
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }

    /// One attribute (`name` lower-case; within an extension when `schema` is set).
    fn project(&self, schema: Option<&str>, name: &str, value: &Value) -> Option<Value> {
        let matching = |list: &[Selector]| -> Vec<Selector> {
            list.iter()
                .filter(|s| s.schema.as_deref() == schema && s.name == name)
                .cloned()
                .collect()
        };
        match self {
            Projection::All => Some(value.clone()),
            Projection::Only(list) => {
                let sel = matching(list);
                if sel.is_empty() {
                    None
                } else if sel.iter().any(|s| s.sub.is_none()) {
                    Some(value.clone())
                } else {
                    let subs: Vec<&str> = sel.iter().filter_map(|s| s.sub.as_deref()).collect();
                    Some(keep_subs(value, &subs, true))
                }
            }
            Projection::Except(list) => {
                let sel = matching(list);
                if sel.iter().any(|s| s.sub.is_none()) {
                    None
                } else if sel.is_empty() {
                    Some(value.clone())
                } else {
                    let subs: Vec<&str> = sel.iter().filter_map(|s| s.sub.as_deref()).collect();
                    Some(keep_subs(value, &subs, false))
                }
            }
        }
    }
}

/// The sub-attributes of a complex value (of each element when multi-valued) named in
/// `subs` (`keep`) or all but those (`!keep`).
fn keep_subs(value: &Value, subs: &[&str], keep: bool) -> Value {
    match value {
        Value::Object(obj) => Value::Object(
            obj.iter()
                .filter(|(k, _)| subs.contains(&k.to_ascii_lowercase().as_str()) == keep)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| keep_subs(v, subs, keep)).collect())
        }
        other => other.clone(),
    }
}

fn selector(raw: &str, core: &str) -> Result<Selector, ProjectionError> {
    // The same attribute-path syntax as filters.
    let path = super::filter::AttrPath::parse(raw)
        .ok_or_else(|| ProjectionError(raw.chars().take(100).collect()))?;
    Ok(Selector {
        schema: path
            .schema
            .filter(|urn| !urn.eq_ignore_ascii_case(core))
            .map(|urn| urn.to_ascii_lowercase()),
        name: path.name.to_ascii_lowercase(),
        sub: path.sub.map(|s| s.to_ascii_lowercase()),
    })
}

/// A list request's page: `startIndex` is 1-based (less than 1 means 1), `count` is at
/// most [`MAX_PAGE`] (negative means 0; absent means [`MAX_PAGE`]). RFC 7644 §3.4.2.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub start_index: u64,
    pub count: usize,
}

impl Page {
    pub fn from_params(start_index: Option<i64>, count: Option<i64>) -> Self {
        Self {
            start_index: start_index.unwrap_or(1).max(1) as u64,
            count: count.map_or(MAX_PAGE, |c| c.clamp(0, MAX_PAGE as i64) as usize),
        }
    }

    /// The SQL `offset` of this page.
    pub fn offset(&self) -> u64 {
        self.start_index - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn user() -> Value {
        json!({
            "schemas": [CORE, ENT], "id": "u1", "meta": {"resourceType": "User"},
            "userName": "a@x.test", "password": "hunter2",
            "name": {"givenName": "A", "familyName": "B"},
            "emails": [{"value": "a@x.test", "type": "work"}, {"value": "h@x.test", "type": "home"}],
            ENT: {"department": "Sales", "costCenter": "42"}
        })
    }

    #[test]
    fn only_the_asked_attributes_and_the_always_returned_ones() {
        let p = Projection::parse(Some("userName, NAME.givenName,emails.value"), None, CORE)
            .expect("parse");
        let got = p.apply(&user(), &[ENT]);
        assert_eq!(
            got,
            json!({
                "schemas": [CORE, ENT], "id": "u1", "meta": {"resourceType": "User"},
                "userName": "a@x.test", "name": {"givenName": "A"},
                "emails": [{"value": "a@x.test"}, {"value": "h@x.test"}]
            })
        );
        let p = Projection::parse(
            Some(&format!("{ENT}:department,{CORE}:userName")),
            None,
            CORE,
        )
        .expect("parse");
        let got = p.apply(&user(), &[ENT]);
        assert_eq!(got[ENT], json!({"department": "Sales"}));
        assert_eq!(got["userName"], "a@x.test");
        assert!(got.get("emails").is_none());
    }

    #[test]
    fn all_but_the_excluded_and_never_the_password() {
        let p = Projection::parse(None, Some("emails,name.familyName"), CORE).expect("parse");
        let got = p.apply(&user(), &[ENT]);
        assert!(got.get("emails").is_none() && got.get("password").is_none());
        assert_eq!(got["name"], json!({"givenName": "A"}));
        assert_eq!(got[ENT]["costCenter"], "42");
        let all = Projection::parse(None, None, CORE)
            .expect("parse")
            .apply(&user(), &[ENT]);
        assert!(all.get("password").is_none(), "returned: never");
        // id, schemas and meta cannot be excluded.
        let p = Projection::parse(None, Some("id,meta,schemas"), CORE).expect("parse");
        let got = p.apply(&user(), &[ENT]);
        assert_eq!(
            (got["id"].as_str(), got["meta"].is_object()),
            (Some("u1"), true)
        );
    }

    #[test]
    fn refusals_and_pages() {
        assert!(Projection::parse(Some("userName"), Some("emails"), CORE).is_err());
        assert!(Projection::parse(Some("user name"), None, CORE).is_err());
        assert!(Projection::parse(Some("emails.value.x"), None, CORE).is_err());
        assert_eq!(
            Projection::parse(Some(" "), None, CORE),
            Ok(Projection::All)
        );
        assert_eq!(
            Page::from_params(None, None),
            Page {
                start_index: 1,
                count: MAX_PAGE
            }
        );
        assert_eq!(
            Page::from_params(Some(-5), Some(-1)),
            Page {
                start_index: 1,
                count: 0
            }
        );
        assert_eq!(Page::from_params(Some(11), Some(1_000_000)).count, MAX_PAGE);
        assert_eq!(Page::from_params(Some(11), Some(10)).offset(), 10);
    }
}
