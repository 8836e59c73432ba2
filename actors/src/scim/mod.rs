//! SCIM 2.0 user events: the wire envelope and its validation (here), the [`rules`] that
//! fold events into state and decide what follows; for the SCIM provider (RFC 7644), the
//! [`filter`] grammar, [`patch`] and the [`projection`] of answers.
//!
//! The envelope on `tenant.<id>.scim` is documented in the README and in
//! `schemas/scim-event.schema.json`. [`parse_event`] turns raw bytes into a [`ScimEvent`] or a
//! [`Rejection`] with a stable reason code (the DLQ header). [`plan_batch`] is the pure rule
//! set the store runs inside its transaction: ordered, idempotent, stale events are no-ops.

pub mod filter;
pub mod patch;
pub mod projection;
pub mod resource;
pub mod rules;

pub use rules::{
    apply_event, plan_batch, BatchPlan, DeletePolicy, EventOutcome, FollowUps, StoredUser,
    UserChanged,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::tenant::TenantId;

pub const CORE_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const MAX_ID_LEN: usize = 256;

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// The role column of the seed data model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Rep,
    Manager,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Rep => "rep",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "rep" => Some(Role::Rep),
            "manager" => Some(Role::Manager),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A validated SCIM event.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimEvent {
    pub event_id: String,
    pub tenant: TenantId,
    pub operation: Operation,
    pub occurred_at: OffsetDateTime,
    pub user: ScimUser,
}

/// The columns extracted from a SCIM User, plus the whole resource as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimUser {
    pub id: String,
    pub user_name: String,
    pub email: Option<String>,
    pub role: Role,
    pub external_id: Option<String>,
    pub manager_id: Option<String>,
    pub active: bool,
    /// The SCIM resource exactly as the producer sent it (kept for the SCIM provider).
    pub resource: Value,
}

/// Why a payload was refused. `code` is stable (DLQ header `dlq.reason`, metric label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    Oversized,
    InvalidJson,
    InvalidField,
    MissingField,
    UnknownOperation,
    TenantMismatch,
    /// Valid JSON the database cannot store (a NUL character in a string or key).
    Unstorable,
    /// `occurredAt` further in the future than clock skew explains: applied, it would make
    /// every later real event for the user look stale.
    ImplausibleTimestamp,
    /// Passed validation, but the database refused it; found by splitting its batch.
    DatabaseRefused,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Oversized => "oversized",
            RejectCode::InvalidJson => "invalid_json",
            RejectCode::InvalidField => "invalid_field",
            RejectCode::MissingField => "missing_field",
            RejectCode::UnknownOperation => "unknown_operation",
            RejectCode::TenantMismatch => "tenant_mismatch",
            RejectCode::Unstorable => "unstorable",
            RejectCode::ImplausibleTimestamp => "implausible_timestamp",
            RejectCode::DatabaseRefused => "database_refused",
        }
    }
}

impl Rejection {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn required_str(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<String, Rejection> {
    match field(obj, name) {
        None => Err(Rejection::new(
            RejectCode::MissingField,
            format!("{path} is required"),
        )),
        Some(Value::String(s)) if s.trim().is_empty() => Err(Rejection::new(
            RejectCode::MissingField,
            format!("{path} must not be empty"),
        )),
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("{path} is longer than {MAX_ID_LEN} bytes"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("{path} must be a string"),
        )),
    }
}

fn optional_str(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<String>, Rejection> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("{path} is longer than {MAX_ID_LEN} bytes"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("{path} must be a string"),
        )),
    }
}

/// What [`parse_event`] accepts beyond the schema.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Larger payloads are rejected as [`RejectCode::Oversized`].
    pub max_bytes: usize,
    /// Later `occurredAt` values are rejected as [`RejectCode::ImplausibleTimestamp`].
    pub latest_occurred_at: OffsetDateTime,
}

impl ParseLimits {
    /// `max_bytes`, and `occurredAt` at most `max_future_skew` after `now`.
    pub fn at(now: OffsetDateTime, max_bytes: usize, max_future_skew: std::time::Duration) -> Self {
        let skew = time::Duration::try_from(max_future_skew).unwrap_or(time::Duration::DAY);
        Self {
            max_bytes,
            latest_occurred_at: now.saturating_add(skew),
        }
    }
}

/// True when a string or key anywhere in `v` holds a NUL character, which PostgreSQL
/// refuses in `text` and `jsonb` alike.
fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Validates one inbound payload read from `topic_tenant`'s topic.
pub fn parse_event(
    topic_tenant: &TenantId,
    payload: &[u8],
    limits: ParseLimits,
) -> Result<ScimEvent, Rejection> {
    let max_bytes = limits.max_bytes;
    if payload.len() > max_bytes {
        return Err(Rejection::new(
            RejectCode::Oversized,
            format!("payload is {} bytes, limit {max_bytes}", payload.len()),
        ));
    }
    let root: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(RejectCode::InvalidJson, format!("not JSON: {e}")))?;
    // A NUL can only arrive escaped (`\u0000`): walk the tree only when the text has one.
    if payload.windows(6).any(|w| w == b"\\u0000") && holds_nul(&root) {
        return Err(Rejection::new(
            RejectCode::Unstorable,
            "a string or key contains a NUL character (\\u0000), which the database cannot store",
        ));
    }
    let Value::Object(mut env) = root else {
        return Err(Rejection::new(
            RejectCode::InvalidJson,
            "envelope must be a JSON object",
        ));
    };
    let event_id = required_str(&env, "eventId", "eventId")?;
    let tenant_raw = required_str(&env, "tenantId", "tenantId")?;
    let tenant = TenantId::parse(&tenant_raw)
        .map_err(|e| Rejection::new(RejectCode::InvalidField, format!("tenantId: {e}")))?;
    if &tenant != topic_tenant {
        return Err(Rejection::new(
            RejectCode::TenantMismatch,
            format!("tenantId {tenant} does not match the topic's tenant {topic_tenant}"),
        ));
    }
    let op_raw = required_str(&env, "operation", "operation")?;
    let operation = match op_raw.as_str() {
        "CREATE" => Operation::Create,
        "UPDATE" => Operation::Update,
        "DELETE" => Operation::Delete,
        _ => {
            return Err(Rejection::new(
                RejectCode::UnknownOperation,
                "operation must be CREATE, UPDATE or DELETE",
            ))
        }
    };
    let occurred_raw = required_str(&env, "occurredAt", "occurredAt")?;
    let occurred_at = OffsetDateTime::parse(&occurred_raw, &Rfc3339).map_err(|_| {
        Rejection::new(
            RejectCode::InvalidField,
            "occurredAt must be an RFC 3339 timestamp",
        )
    })?;
    if occurred_at > limits.latest_occurred_at {
        return Err(Rejection::new(
            RejectCode::ImplausibleTimestamp,
            format!("occurredAt {occurred_raw} is later than the accepted clock skew allows"),
        ));
    }
    // Taken out of the envelope: the user object becomes the stored resource, not a copy.
    let user = match env.remove("user").filter(|v| !v.is_null()) {
        None => return Err(Rejection::new(RejectCode::MissingField, "user is required")),
        Some(Value::Object(u)) => parse_user(u, operation)?,
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "user must be a SCIM User object",
            ))
        }
    };
    Ok(ScimEvent {
        event_id,
        tenant,
        operation,
        occurred_at,
        user,
    })
}

/// SCIM attributes never stored nor re-published (names compared case-insensitively, as
/// SCIM attribute names are): an identity system may send a user's password on create.
pub const NEVER_STORED: [&str; 1] = ["password"];

fn parse_user(mut u: serde_json::Map<String, Value>, op: Operation) -> Result<ScimUser, Rejection> {
    u.retain(|k, _| !NEVER_STORED.iter().any(|n| k.eq_ignore_ascii_case(n)));
    let fields = parse_user_fields(&u, op)?;
    Ok(ScimUser {
        resource: Value::Object(u),
        ..fields
    })
}

/// The typed fields of a SCIM user; `resource` is filled in by the caller.
fn parse_user_fields(
    u: &serde_json::Map<String, Value>,
    op: Operation,
) -> Result<ScimUser, Rejection> {
    match field(u, "schemas") {
        Some(Value::Array(items)) if items.iter().any(|s| s == CORE_USER_SCHEMA) => {}
        Some(Value::Array(_)) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("user.schemas must contain {CORE_USER_SCHEMA}"),
            ))
        }
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "user.schemas must be an array of strings",
            ))
        }
        None => {
            return Err(Rejection::new(
                RejectCode::MissingField,
                "user.schemas is required",
            ))
        }
    }
    let id = required_str(u, "id", "user.id")?;
    let user_name = required_str(u, "userName", "user.userName")?;
    let external_id = optional_str(u, "externalId", "user.externalId")?;
    if let Some(name) = field(u, "name") {
        if !name.is_object() {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "user.name must be an object",
            ));
        }
    }
    let active = match field(u, "active") {
        None => op != Operation::Delete,
        Some(Value::Bool(b)) => *b && op != Operation::Delete,
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "user.active must be a boolean",
            ))
        }
    };
    let email = primary_value(u, "emails", "user.emails")?;
    if let Some(e) = &email {
        if !e.contains('@') || e.len() > MAX_ID_LEN {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "user.emails[].value must be an email address",
            ));
        }
    }
    if email.is_none() && op != Operation::Delete {
        return Err(Rejection::new(
            RejectCode::MissingField,
            "user.emails needs at least one value for CREATE and UPDATE",
        ));
    }
    let role = match primary_value(u, "roles", "user.roles")? {
        None => Role::Rep,
        Some(r) => Role::parse(&r).ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidField,
                "user.roles[].value must be rep, manager or admin",
            )
        })?,
    };
    let manager_id = match field(u, ENTERPRISE_USER_SCHEMA) {
        None => None,
        Some(Value::Object(ext)) => match field(ext, "manager") {
            None => None,
            Some(Value::Object(m)) => optional_str(m, "value", "user.manager.value")?,
            Some(_) => {
                return Err(Rejection::new(
                    RejectCode::InvalidField,
                    "enterprise manager must be an object with a value",
                ))
            }
        },
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "enterprise extension must be an object",
            ))
        }
    };
    Ok(ScimUser {
        id,
        user_name,
        email,
        role,
        external_id,
        manager_id,
        active,
        resource: Value::Null,
    })
}

/// The `value` of the primary entry of a SCIM multi-valued attribute (else the first).
fn primary_value(
    u: &serde_json::Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<String>, Rejection> {
    let items = match field(u, name) {
        None => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("{path} must be an array"),
            ))
        }
    };
    let mut chosen = None;
    for item in items {
        let Value::Object(obj) = item else {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("{path}[] entries must be objects"),
            ));
        };
        let value = optional_str(obj, "value", &format!("{path}[].value"))?;
        let primary = matches!(field(obj, "primary"), Some(Value::Bool(true)));
        if primary || chosen.is_none() {
            chosen = value.or(chosen);
        }
        if primary {
            break;
        }
    }
    Ok(chosen)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    pub fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    pub fn envelope(event_id: &str, op: &str, user_id: &str, at: &str, email: &str) -> Vec<u8> {
        serde_json::json!({
            "eventId": event_id, "tenantId": "acme", "operation": op, "occurredAt": at,
            "user": {
                "schemas": [CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
                "id": user_id, "userName": format!("{user_id}@acme.test"),
                "externalId": format!("hr-{user_id}"),
                "name": {"givenName": "Ada", "familyName": "Lovelace"},
                "emails": [{"value": email, "primary": true}],
                "active": true,
                "roles": [{"value": "manager", "primary": true}],
                ENTERPRISE_USER_SCHEMA: {"manager": {"value": "boss"}}
            }
        })
        .to_string()
        .into_bytes()
    }

    fn limits() -> ParseLimits {
        ParseLimits {
            max_bytes: 64 * 1024,
            latest_occurred_at: OffsetDateTime::UNIX_EPOCH + time::Duration::days(30_000),
        }
    }

    fn parse(bytes: &[u8]) -> Result<ScimEvent, Rejection> {
        parse_event(&tenant(), bytes, limits())
    }

    #[test]
    fn parses_a_full_envelope() {
        let ev = parse(&envelope(
            "e1",
            "CREATE",
            "u1",
            "2026-01-01T00:00:00Z",
            "a@acme.test",
        ))
        .unwrap();
        assert_eq!(ev.operation, Operation::Create);
        assert_eq!(ev.user.id, "u1");
        assert_eq!(ev.user.role, Role::Manager);
        assert_eq!(ev.user.manager_id.as_deref(), Some("boss"));
        assert_eq!(ev.user.email.as_deref(), Some("a@acme.test"));
        assert_eq!(ev.user.external_id.as_deref(), Some("hr-u1"));
        assert!(ev.user.active);
    }

    #[test]
    fn a_password_is_never_part_of_the_stored_resource() {
        let ev = parse(&mutate(|v| {
            v["user"]["password"] = "s3cret".into();
            v["user"]["Password"] = "s3cret".into();
        }))
        .unwrap();
        assert!(!ev.user.resource.to_string().contains("s3cret"));
        assert_eq!(
            ev.user.resource["userName"], "u1@acme.test",
            "the rest is kept"
        );
    }

    fn code_of(bytes: &[u8]) -> RejectCode {
        parse(bytes).unwrap_err().code
    }

    fn mutate(f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&envelope(
            "e1",
            "CREATE",
            "u1",
            "2026-01-01T00:00:00Z",
            "a@b.c",
        ))
        .unwrap();
        f(&mut v);
        v.to_string().into_bytes()
    }

    #[test]
    fn rejects_bad_input_with_stable_codes() {
        assert_eq!(code_of(b"not json"), RejectCode::InvalidJson);
        assert_eq!(code_of(b"[1,2]"), RejectCode::InvalidJson);
        assert_eq!(
            code_of(&mutate(|v| v["user"]
                .as_object_mut()
                .unwrap()
                .remove("userName")
                .map(|_| ())
                .unwrap())),
            RejectCode::MissingField
        );
        assert_eq!(
            code_of(&mutate(|v| v["user"]
                .as_object_mut()
                .unwrap()
                .remove("id")
                .map(|_| ())
                .unwrap())),
            RejectCode::MissingField
        );
        assert_eq!(
            code_of(&mutate(|v| v["user"]["id"] = 42.into())),
            RejectCode::InvalidField
        );
        assert_eq!(
            code_of(&mutate(|v| v["user"]["active"] = "yes".into())),
            RejectCode::InvalidField
        );
        assert_eq!(
            code_of(&mutate(|v| v["operation"] = "PATCHY".into())),
            RejectCode::UnknownOperation
        );
        assert_eq!(
            code_of(&mutate(|v| v["tenantId"] = "globex".into())),
            RejectCode::TenantMismatch
        );
        assert_eq!(
            code_of(&mutate(|v| v["tenantId"] = "a*".into())),
            RejectCode::InvalidField
        );
        assert_eq!(
            code_of(&mutate(|v| v["occurredAt"] = "yesterday".into())),
            RejectCode::InvalidField
        );
        assert_eq!(
            code_of(&mutate(|v| v["user"]["schemas"] = serde_json::json!(["x"]))),
            RejectCode::InvalidField
        );
        assert_eq!(
            code_of(&mutate(
                |v| v["user"]["roles"] = serde_json::json!([{"value": "ceo"}])
            )),
            RejectCode::InvalidField
        );
        let big = vec![b' '; 70 * 1024];
        assert_eq!(code_of(&big), RejectCode::Oversized);
    }

    #[test]
    fn a_nul_anywhere_is_unstorable_and_an_escaped_backslash_is_not() {
        let mut v: Value = serde_json::from_slice(&envelope(
            "e1",
            "CREATE",
            "u1",
            "2026-01-01T00:00:00Z",
            "a@acme.test",
        ))
        .unwrap();
        v["user"]["userName"] = Value::String("bad\u{0}name".into());
        let r = parse(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(r.code, RejectCode::Unstorable);
        let mut v2: Value = serde_json::from_slice(&envelope(
            "e1",
            "CREATE",
            "u1",
            "2026-01-01T00:00:00Z",
            "a@acme.test",
        ))
        .unwrap();
        v2["user"]["name"] = serde_json::json!({"k\u{0}ey": "x"});
        assert_eq!(
            parse(v2.to_string().as_bytes()).unwrap_err().code,
            RejectCode::Unstorable
        );
        // The six characters `\u0000` as text (an escaped backslash) are storable.
        v2["user"]["name"] = serde_json::json!({"givenName": "\\u0000"});
        assert!(parse(v2.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn an_occurred_at_beyond_the_skew_is_implausible() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let limits = ParseLimits::at(now, 64 * 1024, std::time::Duration::from_secs(3600));
        let at = |d: time::Duration| {
            (now + d)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let ok = envelope(
            "e1",
            "CREATE",
            "u1",
            &at(time::Duration::minutes(59)),
            "a@acme.test",
        );
        assert!(parse_event(&tenant(), &ok, limits).is_ok());
        let late = envelope(
            "e1",
            "CREATE",
            "u1",
            &at(time::Duration::minutes(61)),
            "a@acme.test",
        );
        assert_eq!(
            parse_event(&tenant(), &late, limits).unwrap_err().code,
            RejectCode::ImplausibleTimestamp
        );
        let far = envelope("e1", "CREATE", "u1", "9999-12-31T23:59:59Z", "a@acme.test");
        assert_eq!(
            parse_event(&tenant(), &far, limits).unwrap_err().code,
            RejectCode::ImplausibleTimestamp
        );
    }

    /// Property: whatever bytes arrive, the parser answers (no panic) and everything it
    /// accepts is storable: no NUL, ids within bounds, a timestamp within the limit.
    #[test]
    fn hostile_payloads_never_panic_and_what_passes_is_storable() {
        let t = tenant();
        let mut gen = crate::hostile::HostileEvents::new(0x5eed, t.as_str());
        let mut accepted = 0;
        let mut by_code: HashMap<&'static str, usize> = HashMap::new();
        for _ in 0..20_000 {
            let (payload, _) = gen.next_payload();
            match parse_event(&t, &payload, limits()) {
                Ok(ev) => {
                    accepted += 1;
                    assert!(!holds_nul(&ev.user.resource));
                    assert!(!ev.event_id.contains('\0') && ev.event_id.len() <= MAX_ID_LEN);
                    assert!(ev.user.id.len() <= MAX_ID_LEN);
                    assert!(ev.occurred_at <= limits().latest_occurred_at);
                }
                Err(r) => *by_code.entry(r.code.as_str()).or_default() += 1,
            }
        }
        // The generator produces both outcomes, and every rejection reason is exercised.
        assert!(accepted > 1_000, "accepted {accepted}");
        for code in [
            "invalid_json",
            "unstorable",
            "implausible_timestamp",
            "oversized",
            "invalid_field",
            "missing_field",
            "tenant_mismatch",
        ] {
            assert!(
                by_code.get(code).copied().unwrap_or(0) > 0,
                "no {code} in {by_code:?}"
            );
        }
    }
}
