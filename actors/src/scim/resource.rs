//! The SCIM provider's resources as clients write them (RFC 7643): a User or a Group body
//! turned into what the service stores, the errors of the protocol with their `scimType`
//! ([`ProviderError`]), and `meta.version` as a weak ETag with its `If-Match` test. Pure:
//! the application layer (`src/scim`) loads, decides with these, and writes in one
//! transaction.
//!
//! A User written over HTTP becomes the same [`ScimUser`] a Kafka event carries, so both
//! paths fold through the same rules. The provider is more lenient than the Kafka envelope
//! where identity providers differ from the HR systems' producers: an e-mail is optional,
//! an unknown role value is kept in the resource and maps to `rep`, Entra's string booleans
//! (`"False"`) are accepted for `active`.

use serde_json::{Map, Value};

use super::filter::FilterError;
use super::patch::{PatchError, PatchSchema};
use super::projection::ProjectionError;
use super::{holds_nul, Role, ScimUser, CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA, NEVER_STORED};

pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const SEARCH_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
/// Members one group write may name (a push of thousands fits; a runaway list does not).
pub const MAX_MEMBERS_PER_WRITE: usize = 20_000;
const MAX_TEXT_CHARS: usize = 256;

/// PATCH knowledge of the User resource.
pub const USER_PATCH: PatchSchema = PatchSchema {
    core: CORE_USER_SCHEMA,
    extensions: &[ENTERPRISE_USER_SCHEMA],
    multi_valued: &[
        "emails",
        "phonenumbers",
        "ims",
        "photos",
        "addresses",
        "roles",
        "entitlements",
        "x509certificates",
        "groups",
    ],
    booleans: &["active", "primary"],
    read_only: &["id", "meta", "groups"],
    case_exact: &[],
};

/// PATCH knowledge of the Group resource.
pub const GROUP_PATCH: PatchSchema = PatchSchema {
    core: GROUP_SCHEMA,
    extensions: &[],
    multi_valued: &["members"],
    booleans: &[],
    read_only: &["id", "meta"],
    case_exact: &["members.value"],
};

/// An error answer of the SCIM protocol (RFC 7644 §3.12): HTTP status, `scimType` where
/// the RFC defines one, and a detail that never echoes a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {detail}")]
pub struct ProviderError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ProviderError {
    fn new(status: u16, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }
    pub fn invalid_value(detail: impl Into<String>) -> Self {
        Self::new(400, Some("invalidValue"), detail)
    }
    pub fn invalid_syntax(detail: impl Into<String>) -> Self {
        Self::new(400, Some("invalidSyntax"), detail)
    }
    pub fn mutability(detail: impl Into<String>) -> Self {
        Self::new(400, Some("mutability"), detail)
    }
    pub fn uniqueness(detail: impl Into<String>) -> Self {
        Self::new(409, Some("uniqueness"), detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, None, detail)
    }
    pub fn precondition_failed(current: i64) -> Self {
        Self::new(
            412,
            None,
            format!(
                "If-Match does not match the current version {}",
                etag(current)
            ),
        )
    }
    pub fn too_many(detail: impl Into<String>) -> Self {
        Self::new(400, Some("tooMany"), detail)
    }
    pub fn unavailable() -> Self {
        Self::new(503, None, "retry later")
    }
    /// The SCIM error body.
    pub fn body(&self) -> Value {
        let mut body = serde_json::json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = Value::String(t.into());
        }
        body
    }
}

impl From<PatchError> for ProviderError {
    fn from(e: PatchError) -> Self {
        let scim_type = e.scim_type();
        Self::new(400, Some(scim_type), e.to_string())
    }
}

impl From<FilterError> for ProviderError {
    fn from(e: FilterError) -> Self {
        Self::new(400, Some("invalidFilter"), e.to_string())
    }
}

impl From<ProjectionError> for ProviderError {
    fn from(e: ProjectionError) -> Self {
        Self::new(400, Some("invalidValue"), e.to_string())
    }
}

/// `meta.version` of a stored version: a weak entity tag.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// True when an `If-Match` header value admits `version`: `*`, or a list of tags one of
/// which names it (weak or strong, compared weakly as RFC 7644 §3.14 versions are).
pub fn if_match_admits(header: &str, version: i64) -> bool {
    let want = version.to_string();
    header.split(',').map(str::trim).any(|tag| {
        tag == "*" || {
            let t = tag.strip_prefix("W/").unwrap_or(tag);
            t.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .is_some_and(|v| v == want)
        }
    })
}

/// The value of `name` in `obj`, matching the name in any case (SCIM attribute names are
/// case-insensitive).
fn get_ci<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn text(
    obj: &Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<Option<String>, ProviderError> {
    match get_ci(obj, name) {
        None if required => Err(ProviderError::invalid_value(format!("{name} is required"))),
        None => Ok(None),
        Some(Value::String(s)) if required && s.trim().is_empty() => Err(
            ProviderError::invalid_value(format!("{name} must not be empty")),
        ),
        Some(Value::String(s)) if s.chars().count() > MAX_TEXT_CHARS => {
            Err(ProviderError::invalid_value(format!(
                "{name} is longer than {MAX_TEXT_CHARS} characters"
            )))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProviderError::invalid_value(format!(
            "{name} must be a string"
        ))),
    }
}

/// A boolean, or Entra's string spelling of one.
fn boolean(v: &Value, name: &str) -> Result<bool, ProviderError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ProviderError::invalid_value(format!(
            "{name} must be a boolean"
        ))),
    }
}

/// Checks `schemas` holds `core` (and only known URNs).
fn check_schemas(
    obj: &Map<String, Value>,
    core: &str,
    known: &[&str],
) -> Result<(), ProviderError> {
    let Some(Value::Array(items)) = get_ci(obj, "schemas") else {
        return Err(ProviderError::invalid_value(format!(
            "schemas must be an array holding {core}"
        )));
    };
    let mut has_core = false;
    for s in items {
        let Some(s) = s.as_str() else {
            return Err(ProviderError::invalid_value("schemas must hold strings"));
        };
        has_core |= s == core;
        if !known.contains(&s) {
            return Err(ProviderError::invalid_value(format!("unknown schema {s}")));
        }
    }
    if has_core {
        Ok(())
    } else {
        Err(ProviderError::invalid_value(format!(
            "schemas must hold {core}"
        )))
    }
}

/// Removes what a client may not set (`id`, `meta`, a User's `groups`) or the service never
/// stores (`password`), and checks the body is storable.
fn strip(mut obj: Map<String, Value>, also: &[&str]) -> Result<Map<String, Value>, ProviderError> {
    obj.retain(|k, _| {
        !(k.eq_ignore_ascii_case("id")
            || k.eq_ignore_ascii_case("meta")
            || NEVER_STORED.iter().any(|n| k.eq_ignore_ascii_case(n))
            || also.iter().any(|n| k.eq_ignore_ascii_case(n)))
    });
    if holds_nul(&Value::Object(obj.clone())) {
        return Err(ProviderError::invalid_value(
            "a string or key contains a NUL character",
        ));
    }
    Ok(obj)
}

/// A User as written by a client (POST, PUT, or the result of a PATCH), for the user `id`.
/// The stored resource is the body without `id`, `meta`, `groups` and `password`, with
/// `id` set and `active` normalised to a boolean.
pub fn user_from_body(body: Value, id: &str) -> Result<ScimUser, ProviderError> {
    let Value::Object(obj) = body else {
        return Err(ProviderError::invalid_syntax(
            "the body must be a JSON object",
        ));
    };
    check_schemas(
        &obj,
        CORE_USER_SCHEMA,
        &[CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
    )?;
    let mut obj = strip(obj, &["groups"])?;
    // Entra sets the manager as a one-element array (`[{"$ref": null, "value": "m1"}]`):
    // stored as the single complex value the enterprise schema defines.
    if let Some(Value::Object(ext)) = obj
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(ENTERPRISE_USER_SCHEMA))
        .map(|(_, v)| v)
    {
        if let Some(key) = ext
            .keys()
            .find(|k| k.eq_ignore_ascii_case("manager"))
            .cloned()
        {
            if let Some(Value::Array(items)) = ext.get(&key) {
                match items.first().cloned() {
                    Some(first) => {
                        ext.insert(key, first);
                    }
                    None => {
                        ext.remove(&key);
                    }
                }
            }
        }
    }
    let user_name = text(&obj, "userName", true)?.unwrap_or_default();
    let external_id = text(&obj, "externalId", false)?;
    let active = match get_ci(&obj, "active") {
        None => true,
        Some(v) => boolean(v, "active")?,
    };
    let email = primary_value(&obj, "emails")?;
    let role = primary_value(&obj, "roles")?
        .and_then(|r| Role::parse(&r))
        .unwrap_or(Role::Rep);
    let manager_id = match get_ci(&obj, ENTERPRISE_USER_SCHEMA) {
        None => None,
        Some(Value::Object(ext)) => match get_ci(ext, "manager") {
            None => None,
            Some(Value::Object(m)) => text(m, "value", false)?,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ProviderError::invalid_value(
                    "the enterprise manager must be an object with a value",
                ))
            }
        },
        Some(_) => {
            return Err(ProviderError::invalid_value(
                "the enterprise extension must be an object",
            ))
        }
    };
    let had_active = get_ci(&obj, "active").is_some();
    obj.retain(|k, _| !k.eq_ignore_ascii_case("active"));
    obj.insert("id".into(), Value::String(id.to_owned()));
    if had_active {
        obj.insert("active".into(), Value::Bool(active));
    }
    Ok(ScimUser {
        id: id.to_owned(),
        user_name,
        email,
        role,
        external_id,
        manager_id,
        active,
        resource: Value::Object(obj),
    })
}

/// The `value` of the primary entry of a multi-valued attribute (else the first).
fn primary_value(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ProviderError> {
    let items = match get_ci(obj, name) {
        None => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ProviderError::invalid_value(format!(
                "{name} must be an array"
            )))
        }
    };
    let mut chosen = None;
    for item in items {
        let Value::Object(entry) = item else {
            return Err(ProviderError::invalid_value(format!(
                "{name} entries must be objects"
            )));
        };
        let value = text(entry, "value", false)?;
        let primary = match get_ci(entry, "primary") {
            None => false,
            Some(v) => boolean(v, "primary")?,
        };
        if primary || chosen.is_none() {
            chosen = value.or(chosen);
        }
        if primary {
            break;
        }
    }
    Ok(chosen)
}

/// A Group as written by a client.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInput {
    pub display_name: String,
    pub external_id: Option<String>,
    /// Member user ids, deduplicated, in the order given. An id of no (or no longer a)
    /// user is kept: a group push may arrive before the user's create, from either path.
    pub members: Vec<String>,
    /// The resource without `id`, `meta` and `members` (members are stored as rows).
    pub resource: Value,
}

/// A Group as written by a client (POST, PUT, or the result of a PATCH).
pub fn group_from_body(body: Value) -> Result<GroupInput, ProviderError> {
    let Value::Object(obj) = body else {
        return Err(ProviderError::invalid_syntax(
            "the body must be a JSON object",
        ));
    };
    check_schemas(&obj, GROUP_SCHEMA, &[GROUP_SCHEMA])?;
    let members_raw = get_ci(&obj, "members").cloned();
    let obj = strip(obj, &["members"])?;
    let display_name = text(&obj, "displayName", true)?.unwrap_or_default();
    let external_id = text(&obj, "externalId", false)?;
    let mut members = Vec::new();
    let mut seen = std::collections::HashSet::new();
    match members_raw {
        None => {}
        Some(Value::Array(items)) => {
            if items.len() > MAX_MEMBERS_PER_WRITE {
                return Err(ProviderError::too_many(format!(
                    "at most {MAX_MEMBERS_PER_WRITE} members in one write"
                )));
            }
            for item in items {
                let Value::Object(m) = item else {
                    return Err(ProviderError::invalid_value(
                        "members entries must be objects",
                    ));
                };
                let Some(value) = text(&m, "value", false)? else {
                    return Err(ProviderError::invalid_value(
                        "a member needs a value (a user id)",
                    ));
                };
                // `type` is free text in RFC 7643; only `Group` (nesting) is refused.
                if let Some(Value::String(t)) = get_ci(&m, "type") {
                    if t.eq_ignore_ascii_case("Group") {
                        return Err(ProviderError::invalid_value(
                            "members of a group are users (nested groups are not supported)",
                        ));
                    }
                }
                if seen.insert(value.clone()) {
                    members.push(value);
                }
            }
        }
        Some(_) => return Err(ProviderError::invalid_value("members must be an array")),
    }
    Ok(GroupInput {
        display_name,
        external_id,
        members,
        resource: Value::Object(obj),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_user_body_maps_to_the_stored_columns_leniently() {
        let u = user_from_body(
            json!({
                "schemas": [CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
                "id": "client-chosen", "meta": {"version": "x"}, "password": "p",
                "userName": "ada@acme.test", "Active": "False",
                "emails": [{"value": "a@acme.test", "primary": "true"}],
                "roles": [{"value": "Sales Engineer"}],
                ENTERPRISE_USER_SCHEMA: {"manager": {"value": "m1"}}
            }),
            "u1",
        )
        .unwrap();
        assert_eq!(u.id, "u1");
        assert!(!u.active);
        assert_eq!(u.role, Role::Rep, "an unknown role maps to rep");
        assert_eq!(u.manager_id.as_deref(), Some("m1"));
        assert_eq!(u.email.as_deref(), Some("a@acme.test"));
        assert_eq!(u.resource["id"], "u1");
        assert_eq!(u.resource["active"], false);
        assert!(u.resource.get("password").is_none() && u.resource.get("meta").is_none());
        assert!(u.resource.get("Active").is_none());
    }

    #[test]
    fn an_entra_manager_array_is_stored_as_one_value() {
        let u = user_from_body(
            json!({"schemas": [CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA], "userName": "a",
                   ENTERPRISE_USER_SCHEMA: {"manager": [{"$ref": null, "value": "m9"}]}}),
            "u1",
        )
        .unwrap();
        assert_eq!(u.manager_id.as_deref(), Some("m9"));
        assert_eq!(u.resource[ENTERPRISE_USER_SCHEMA]["manager"]["value"], "m9");
    }

    #[test]
    fn bad_user_bodies_get_invalid_value() {
        for body in [
            json!({"userName": "a"}),
            json!({"schemas": ["urn:x"], "userName": "a"}),
            json!({"schemas": [CORE_USER_SCHEMA]}),
            json!({"schemas": [CORE_USER_SCHEMA], "userName": " "}),
            json!({"schemas": [CORE_USER_SCHEMA], "userName": 5}),
            json!({"schemas": [CORE_USER_SCHEMA], "userName": "a", "active": "maybe"}),
            json!({"schemas": [CORE_USER_SCHEMA], "userName": "a\u{0}b"}),
        ] {
            let e = user_from_body(body.clone(), "u1").unwrap_err();
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some("invalidValue")),
                "{body}"
            );
        }
        assert_eq!(
            user_from_body(json!([1]), "u").unwrap_err().scim_type,
            Some("invalidSyntax")
        );
    }

    #[test]
    fn group_members_are_deduplicated_users() {
        let g = group_from_body(json!({
            "schemas": [GROUP_SCHEMA], "displayName": "Sales",
            "members": [{"value": "u1"}, {"value": "u2", "type": "User"}, {"value": "u1"}]
        }))
        .unwrap();
        assert_eq!(g.members, ["u1", "u2"]);
        assert!(g.resource.get("members").is_none());
        let nested = group_from_body(json!({
            "schemas": [GROUP_SCHEMA], "displayName": "S",
            "members": [{"value": "g2", "type": "Group"}]
        }));
        assert_eq!(nested.unwrap_err().scim_type, Some("invalidValue"));
    }

    #[test]
    fn if_match_compares_versions_weakly() {
        assert!(if_match_admits("W/\"3\"", 3));
        assert!(if_match_admits("\"3\"", 3));
        assert!(if_match_admits("W/\"1\", W/\"3\"", 3));
        assert!(if_match_admits("*", 9));
        assert!(!if_match_admits("W/\"2\"", 3));
        assert!(!if_match_admits("3", 3));
        assert_eq!(etag(7), "W/\"7\"");
    }

    #[test]
    fn errors_carry_the_scim_error_schema() {
        let b = ProviderError::uniqueness("userName taken").body();
        assert_eq!(b["schemas"][0], ERROR_SCHEMA);
        assert_eq!(b["status"], "409");
        assert_eq!(b["scimType"], "uniqueness");
        assert!(ProviderError::not_found("x")
            .body()
            .get("scimType")
            .is_none());
    }
}
