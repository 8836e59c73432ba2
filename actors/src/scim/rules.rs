//! The pure rules of SCIM effects: how ordered events fold into a user's stored state
//! (create or update upserts, deactivate keeps history, a stale or already seen event is a
//! no-op) and what an effective change sets in motion ([`FollowUps`]: a MindTickle push, a
//! readiness re-aggregation). The store runs [`plan_batch`] inside the batch's transaction
//! after locking the users' rows, then writes the plan; nothing here does I/O.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use time::OffsetDateTime;

use super::{Operation, Role, ScimEvent};
use crate::jobs::JobPriority;
use crate::readiness::ReadinessMark;
use crate::tenant::TenantId;

/// A user's stored state, as the store loads and writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    pub user_id: String,
    pub user_name: String,
    pub email: Option<String>,
    pub role: Role,
    pub external_id: Option<String>,
    pub manager_id: Option<String>,
    pub active: bool,
    /// Deleted by a SCIM DELETE (deactivated as well): the SCIM provider no longer serves
    /// it; a later CREATE of the same id brings it back.
    pub deleted: bool,
    pub resource: Value,
    /// Incremented on every effective change (`meta.version` of the SCIM provider).
    pub version: i64,
    /// `occurredAt` of the newest event applied; older events are stale.
    pub occurred_at: OffsetDateTime,
    pub last_event_id: String,
}

impl StoredUser {
    fn same_content(&self, other: &StoredUser) -> bool {
        self.user_name == other.user_name
            && self.email == other.email
            && self.role == other.role
            && self.external_id == other.external_id
            && self.manager_id == other.manager_id
            && self.active == other.active
            && self.deleted == other.deleted
            && self.resource == other.resource
    }
}

/// What one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The user changed; one `user_changed` record is written.
    Applied,
    /// Newer than the stored state but identical in content: nothing to announce.
    Unchanged,
    /// Older than the stored state: ignored.
    Stale,
    /// Event id processed before: ignored.
    Duplicate,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Unchanged => "unchanged",
            EventOutcome::Stale => "stale",
            EventOutcome::Duplicate => "duplicate",
        }
    }
}

/// The `user_changed` payload written to the outbox for an effective change.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserChanged {
    pub event_id: String,
    pub tenant_id: TenantId,
    pub operation: Operation,
    pub user_id: String,
    pub version: i64,
    pub active: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The user's SCIM resource, serialised once when the change is planned.
    pub user: Box<RawValue>,
}

/// Everything a batch writes, computed before writing.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// Final state of every user the batch touched (one row per user).
    pub upserts: Vec<StoredUser>,
    /// One record per effective change, in event order.
    pub changes: Vec<UserChanged>,
    /// Outcome per event, in input order.
    pub outcomes: Vec<(String, EventOutcome)>,
    /// What the changes set in motion beyond the users table and `user_changed`.
    pub follow_ups: FollowUps,
}

/// Follow-up work of a batch, decided by the rules so the unit of work only writes it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FollowUps {
    /// Push every change to MindTickle: one `push_user` job per change at this priority,
    /// carrying the `user_change` record (queued only for a tenant with upstream
    /// credentials: without them there is no platform account to push to).
    pub push_changes: Option<JobPriority>,
    /// Re-aggregate the tenant's readiness report (debounced by the aggregator).
    pub readiness: Option<ReadinessMark>,
}

/// Folds `events` (in log order) into `current` user states.
///
/// `seen` holds event ids already processed (from the idempotency table); ids repeated
/// inside the batch count as duplicates too. The store calls this inside the tenant
/// transaction after locking the users' rows.
pub fn plan_batch(
    mut current: HashMap<String, StoredUser>,
    seen: &std::collections::HashSet<String>,
    events: Vec<ScimEvent>,
    delete: DeletePolicy,
) -> BatchPlan {
    let mut plan = BatchPlan::default();
    let mut batch_ids = std::collections::HashSet::new();
    let mut touched: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut touched_order: Vec<String> = Vec::new();
    for ev in events {
        if seen.contains(&ev.event_id) || !batch_ids.insert(ev.event_id.clone()) {
            plan.outcomes.push((ev.event_id, EventOutcome::Duplicate));
            continue;
        }
        let (event_id, tenant_id, operation, occurred_at) = (
            ev.event_id.clone(),
            ev.tenant.clone(),
            ev.operation,
            ev.occurred_at,
        );
        let prev = current.get(&ev.user.id);
        let (outcome, next) = apply_event(prev, ev, delete);
        if let Some(next) = next {
            if outcome == EventOutcome::Applied {
                plan.changes.push(UserChanged {
                    event_id: event_id.clone(),
                    tenant_id,
                    operation,
                    user_id: next.user_id.clone(),
                    version: next.version,
                    active: next.active,
                    occurred_at,
                    user: raw_json(&next.resource),
                });
            }
            if touched.insert(next.user_id.clone()) {
                touched_order.push(next.user_id.clone());
            }
            current.insert(next.user_id.clone(), next);
        }
        plan.outcomes.push((event_id, outcome));
    }
    if !plan.changes.is_empty() {
        // Every effective change reaches the platform and the team figures; a batch of
        // duplicates, stale or unchanged events sets nothing in motion.
        plan.follow_ups = FollowUps {
            push_changes: Some(JobPriority::ScimPush),
            readiness: Some(ReadinessMark::UsersChanged),
        };
    }
    let touched = touched_order;
    plan.upserts = touched
        .into_iter()
        .filter_map(|id| current.remove(&id))
        .collect();
    plan
}

/// Serialises a JSON value once, for records that embed it verbatim.
fn raw_json(v: &Value) -> Box<RawValue> {
    // Cannot fail for a `Value`: its map keys are strings.
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// What a SCIM DELETE does to the stored user (`pipeline.scim_delete`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletePolicy {
    /// Deactivate and keep the attributes (history, reports by manager).
    #[default]
    Deactivate,
    /// Deactivate and erase the personal fields (user name, email, external id, manager,
    /// the SCIM resource but its id): the row keeps only what idempotency, ordering and
    /// the pseudonymous progress history need.
    ErasePersonalData,
}

/// Applies one event to one user's state. Returns the new state when it must be written.
pub fn apply_event(
    prev: Option<&StoredUser>,
    ev: ScimEvent,
    delete: DeletePolicy,
) -> (EventOutcome, Option<StoredUser>) {
    if let Some(p) = prev {
        if ev.occurred_at < p.occurred_at {
            return (EventOutcome::Stale, None);
        }
    }
    let mut next = match (ev.operation, prev) {
        (Operation::Delete, Some(p)) if delete == DeletePolicy::ErasePersonalData => StoredUser {
            user_id: p.user_id.clone(),
            user_name: p.user_id.clone(),
            email: None,
            role: p.role,
            external_id: None,
            manager_id: None,
            active: false,
            deleted: true,
            resource: serde_json::json!({
                "schemas": [crate::scim::CORE_USER_SCHEMA],
                "id": p.user_id,
                "active": false,
            }),
            version: p.version,
            occurred_at: p.occurred_at,
            last_event_id: String::new(),
        },
        (Operation::Delete, Some(p)) => {
            // Deactivation keeps the stored attributes (history), only `active` flips.
            let mut n = p.clone();
            n.active = false;
            n.deleted = true;
            if let Value::Object(obj) = &mut n.resource {
                obj.insert("active".into(), Value::Bool(false));
            }
            n
        }
        _ => {
            let user = ev.user;
            let mut resource = user.resource;
            // `active` as the stored boolean where the resource has it; a resource without
            // it stays without it (SCIM's default applies: active).
            if let Value::Object(obj) = &mut resource {
                if obj.contains_key("active") || !user.active {
                    obj.insert("active".into(), Value::Bool(user.active));
                }
            }
            StoredUser {
                user_id: user.id,
                user_name: user.user_name,
                email: user.email,
                role: user.role,
                external_id: user.external_id,
                manager_id: user.manager_id,
                active: user.active,
                // A DELETE of a user never seen is stored deleted as well.
                deleted: ev.operation == Operation::Delete,
                resource,
                version: prev.map_or(0, |p| p.version),
                occurred_at: ev.occurred_at,
                last_event_id: String::new(),
            }
        }
    };
    next.occurred_at = ev.occurred_at;
    next.last_event_id = ev.event_id;
    let changed = prev.is_none_or(|p| !p.same_content(&next));
    if changed {
        next.version = prev.map_or(1, |p| p.version + 1);
        (EventOutcome::Applied, Some(next))
    } else {
        (EventOutcome::Unchanged, Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::tests::{envelope, tenant};
    use crate::scim::{parse_event, ParseLimits};
    use std::collections::HashSet;

    fn limits() -> ParseLimits {
        ParseLimits {
            max_bytes: 64 * 1024,
            latest_occurred_at: OffsetDateTime::UNIX_EPOCH + time::Duration::days(30_000),
        }
    }

    fn ev(id: &str, op: &str, user: &str, at: &str, email: &str) -> ScimEvent {
        parse_event(&tenant(), &envelope(id, op, user, at, email), limits()).unwrap()
    }

    #[test]
    fn create_update_delete_fold_in_order() {
        let events = vec![
            ev("e1", "CREATE", "u1", "2026-01-01T00:00:00Z", "a@acme.test"),
            ev("e2", "UPDATE", "u1", "2026-01-02T00:00:00Z", "b@acme.test"),
            ev("e3", "UPDATE", "u1", "2026-01-03T00:00:00Z", "b@acme.test"),
            ev("e4", "DELETE", "u1", "2026-01-04T00:00:00Z", "b@acme.test"),
            ev("e2", "UPDATE", "u1", "2026-01-02T00:00:00Z", "b@acme.test"),
        ];
        let plan = plan_batch(
            HashMap::new(),
            &HashSet::new(),
            events,
            DeletePolicy::Deactivate,
        );
        let outcomes: Vec<_> = plan.outcomes.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            outcomes,
            [
                EventOutcome::Applied,
                EventOutcome::Applied,
                EventOutcome::Unchanged,
                EventOutcome::Applied,
                EventOutcome::Duplicate
            ]
        );
        assert_eq!(plan.changes.len(), 3);
        assert_eq!(plan.upserts.len(), 1);
        let u = &plan.upserts[0];
        assert!(!u.active);
        assert_eq!(u.version, 3);
        assert_eq!(u.email.as_deref(), Some("b@acme.test"));
        assert_eq!(u.resource["active"], Value::Bool(false));
    }

    #[test]
    fn stale_and_already_seen_events_are_no_ops() {
        let first = plan_batch(
            HashMap::new(),
            &HashSet::new(),
            vec![ev(
                "e1",
                "UPDATE",
                "u1",
                "2026-01-05T00:00:00Z",
                "new@acme.test",
            )],
            DeletePolicy::Deactivate,
        );
        let stored: HashMap<_, _> = first
            .upserts
            .into_iter()
            .map(|u| (u.user_id.clone(), u))
            .collect();
        let seen: HashSet<String> = ["e1".to_string()].into();
        let plan = plan_batch(
            stored,
            &seen,
            vec![
                ev(
                    "e0",
                    "CREATE",
                    "u1",
                    "2026-01-01T00:00:00Z",
                    "old@acme.test",
                ),
                ev(
                    "e1",
                    "UPDATE",
                    "u1",
                    "2026-01-05T00:00:00Z",
                    "new@acme.test",
                ),
            ],
            DeletePolicy::Deactivate,
        );
        assert_eq!(
            plan.outcomes.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
            [EventOutcome::Stale, EventOutcome::Duplicate]
        );
        assert!(plan.changes.is_empty());
        assert!(plan.upserts.is_empty());
    }

    #[test]
    fn delete_of_unknown_user_records_an_inactive_tombstone() {
        let plan = plan_batch(
            HashMap::new(),
            &HashSet::new(),
            vec![ev(
                "e9",
                "DELETE",
                "u9",
                "2026-01-05T00:00:00Z",
                "x@acme.test",
            )],
            DeletePolicy::Deactivate,
        );
        assert_eq!(plan.upserts.len(), 1);
        assert!(!plan.upserts[0].active);
        // A CREATE older than the tombstone cannot resurrect the user.
        let stored = plan
            .upserts
            .into_iter()
            .map(|u| (u.user_id.clone(), u))
            .collect();
        let again = plan_batch(
            stored,
            &HashSet::new(),
            vec![ev(
                "e8",
                "CREATE",
                "u9",
                "2026-01-01T00:00:00Z",
                "x@acme.test",
            )],
            DeletePolicy::Deactivate,
        );
        assert_eq!(again.outcomes[0].1, EventOutcome::Stale);
    }
}
