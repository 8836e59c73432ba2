//! SCIM Users: reads through compiled filters, writes as SCIM events through the Kafka
//! path's unit of work (`db::scim::apply_batch`). A write waits for its tenant's next
//! transaction ([`super::writer`]); there the consecutive user writes are decided together
//! ([`apply_user_writes`]): the users read once, for each write `If-Match` checked, the
//! PATCH applied or the body taken, `userName` uniqueness checked, the event made; then all
//! events folded in one unit of work, the tenant's owner woken (outbox relay, push job);
//! the answers are the users as the unit of work wrote them (no read-back).

use std::any::Any;
use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Transaction;

use super::writer::{Write, WriteResult};
use super::{
    list_response, meta, new_id, precondition, shape, unavailable, Change, ListQuery, ScimProvider,
    Scope, Served,
};
use crate::actors::ports::ScimBatch;
use crate::actors::scim::filter;
use crate::actors::scim::patch::{self, PatchOperation};
use crate::actors::scim::resource::{user_from_body, ProviderError, USER_PATCH};
use crate::actors::scim::DeletePolicy;
use crate::actors::scim::{
    Operation, ScimEvent, ScimUser, StoredUser, CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA,
};
use crate::actors::TenantId;
use crate::db::scim::Finish;
use crate::db::scim_provider::{self, ProviderUser};
use crate::db::{scim, scim_filter};
use crate::tenant_tx;

/// The served form of a stored user: the resource, its groups and `meta`.
fn render(u: &ProviderUser, base: &str) -> Value {
    let mut r = u.resource.clone();
    if let Value::Object(obj) = &mut r {
        obj.insert("id".into(), Value::String(u.user_id.clone()));
        obj.retain(|k, _| !k.eq_ignore_ascii_case("groups"));
        if u.groups.as_array().is_some_and(|g| !g.is_empty()) {
            obj.insert("groups".into(), u.groups.clone());
        }
        obj.insert(
            "meta".into(),
            meta(
                "User",
                format!("{base}/Users/{}", u.user_id),
                u.created,
                u.updated,
                u.version,
            ),
        );
    }
    r
}

impl ScimProvider {
    /// `GET /Users/{id}`.
    pub async fn get_user(
        &self,
        scope: &Scope<'_>,
        id: &str,
        q: &ListQuery,
    ) -> Result<Served, ProviderError> {
        let (projection, _) = shape(q, CORE_USER_SCHEMA)?;
        let id = id.to_owned();
        let found = tenant_tx!(self.store, scope.tenant, |tx, t| {
            scim_provider::user(tx, t, &id, false).await
        })
        .await
        .map_err(unavailable)?
        .filter(|u| !u.deleted)
        .ok_or_else(|| ProviderError::not_found("no such user"))?;
        Ok(Served {
            resource: projection.apply(&render(&found, scope.base_url), &[ENTERPRISE_USER_SCHEMA]),
            version: found.version,
        })
    }

    /// `GET /Users` and `POST /Users/.search`.
    pub async fn list_users(
        &self,
        scope: &Scope<'_>,
        q: &ListQuery,
    ) -> Result<Value, ProviderError> {
        let (projection, page) = shape(q, CORE_USER_SCHEMA)?;
        let condition = match q.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            None => None,
            Some(f) => Some(scim_filter::user_condition(&filter::parse(f)?, "u", 4)?),
        };
        let (offset, limit) = (page.offset() as i64, page.count as i64);
        let (total, users) = tenant_tx!(self.store, scope.tenant, |tx, t| {
            scim_provider::list_users(tx, t, condition.as_ref(), offset, limit).await
        })
        .await
        .map_err(unavailable)?;
        let resources = users
            .iter()
            .map(|u| projection.apply(&render(u, scope.base_url), &[ENTERPRISE_USER_SCHEMA]))
            .collect();
        Ok(list_response(total, page, resources))
    }

    /// POST (`id` none), PUT, PATCH, DELETE of a user. `None` for a DELETE.
    pub async fn write_user(
        &self,
        scope: &Scope<'_>,
        id: Option<&str>,
        change: Change,
        if_match: Option<&str>,
    ) -> Result<Option<Served>, ProviderError> {
        // Parsed before the transaction: a malformed PatchOp costs no database work.
        let ops = match &change {
            Change::Patch(body) => Some(patch::parse_request(body)?),
            _ => None,
        };
        let write = UserWrite {
            creating: matches!(change, Change::Create(_)),
            id: id.map_or_else(new_id, str::to_owned),
            change,
            ops,
            if_match: if_match.map(str::to_owned),
            tenant: scope.tenant.clone(),
            policy: self.delete_policy,
        };
        let outcome = self
            .writers
            .run(scope.tenant, Write::User(write))
            .await?
            .downcast::<UserWritten>()
            .map_err(|_| ProviderError::unavailable())?;
        let UserWritten { applied, stored } = *outcome;
        if applied {
            // Best effort, as on the Kafka path: the roster's TTL bounds a missed one.
            if let Err(e) = self.cache.invalidate_roster(scope.tenant).await {
                tracing::warn!(tenant = %scope.tenant, error = %e, "roster invalidation failed");
            }
        }
        Ok(stored.filter(|u| !u.deleted).map(|u| Served {
            resource: render(&u, scope.base_url),
            version: u.version,
        }))
    }
}

/// A user write waiting for its tenant's next transaction (POST, PUT, PATCH or DELETE).
#[derive(Debug, Clone)]
pub(crate) struct UserWrite {
    pub(crate) id: String,
    pub(crate) creating: bool,
    change: Change,
    /// The parsed PatchOp of a PATCH.
    ops: Option<Vec<PatchOperation>>,
    if_match: Option<String>,
    tenant: TenantId,
    policy: DeletePolicy,
}

impl UserWrite {
    /// True when the write may give a user a `userName` (a create, a PUT, a PATCH whose
    /// operations name `userName` or carry it in a path-less value): its batch checks
    /// uniqueness under a name lock, so it must not run beside another batch of the tenant
    /// ([`super::writer`]).
    pub(crate) fn may_claim_user_name(&self) -> bool {
        match (&self.change, &self.ops) {
            (Change::Delete, _) => false,
            (Change::Patch(_), Some(ops)) => ops.iter().any(|op| match &op.path {
                Some(p) => p.attr.name.eq_ignore_ascii_case("userName"),
                None => op.value.as_ref().is_some_and(|v| {
                    v.as_object().is_none_or(|o| {
                        o.keys()
                            .any(|k| k.eq_ignore_ascii_case("userName") || k.contains(':'))
                    })
                }),
            }),
            _ => true,
        }
    }
}

/// A user write's answer: whether its event changed anything, and the user after it.
struct UserWritten {
    applied: bool,
    stored: Option<ProviderUser>,
}

/// Applies a run of consecutive user writes of one transaction, in order; one answer each.
///
/// The writes are decided on the users as read once for the run, and their events go
/// through the unit of work together ([`scim::apply_batch`]: one idempotency insert, one
/// upsert, one outbox append for all), answered with the users it wrote. The run is
/// flushed early where a write must see the writes before it in the database: a second
/// write of the same user, and a `userName` to check for uniqueness (a create, a rename).
/// Refusals (`If-Match`, unknown user, bad body, a taken `userName`) answer only their
/// write; a database error fails the run (the caller retries its writes one by one).
/// With `lock`, the users are locked as they are read (the caller has not locked them).
pub(crate) async fn apply_user_writes(
    tx: &Transaction<'_>,
    t: &str,
    writes: &[UserWrite],
    lock: bool,
    finish: Finish,
) -> Result<Vec<WriteResult>, tokio_postgres::Error> {
    let known: Vec<&str> = writes
        .iter()
        .filter(|w| !w.creating)
        .map(|w| w.id.as_str())
        .collect();
    // The users and the tenant's credentials in one round trip: the unit of work decides
    // on them without reading them again (`scim::Locked`).
    let (read, has_credentials) = tokio::join!(
        biased;
        scim_provider::users_to_write(tx, t, &known, lock),
        scim::has_upstream_credentials(tx, t),
    );
    let (users, stored) = read?;
    let mut state = WriteState {
        users,
        stored,
        has_credentials: has_credentials?,
    };
    let mut answers: Vec<Option<WriteResult>> = writes.iter().map(|_| None).collect();
    let mut run = PendingRun::default();
    for (i, w) in writes.iter().enumerate() {
        if run.touches(&w.id) {
            run.flush(tx, t, &mut state, &mut answers, Finish::KeepOpen)
                .await?;
        }
        let current = if w.creating {
            None
        } else {
            match state.users.get(&w.id) {
                Some(u) if !u.deleted => Some(u),
                _ => {
                    answers[i] = Some(Err(ProviderError::not_found("no such user")));
                    continue;
                }
            }
        };
        if let Some(c) = current {
            if let Err(e) = precondition(w.if_match.as_deref(), c.version) {
                answers[i] = Some(Err(e));
                continue;
            }
        }
        let (operation, user) = match next_state(&w.id, w.change.clone(), w.ops.clone(), current) {
            Ok(e) => e,
            Err(e) => {
                answers[i] = Some(Err(e));
                continue;
            }
        };
        let renamed = current.is_none_or(|c| !c.user_name.eq_ignore_ascii_case(&user.user_name));
        let now = OffsetDateTime::now_utc();
        // After whatever was applied before: an HTTP write always lands on what it read.
        let occurred_at = current.map_or(now, |c| {
            now.max(c.occurred_at + time::Duration::microseconds(1))
        });
        if operation != Operation::Delete && renamed {
            // The check reads the database: the writes before it must be there.
            run.flush(tx, t, &mut state, &mut answers, Finish::KeepOpen)
                .await?;
            if scim_provider::user_name_taken(tx, t, &user.user_name, &w.id).await? {
                answers[i] = Some(Err(ProviderError::uniqueness(
                    "another user of this tenant has this userName",
                )));
                continue;
            }
        }
        run.push(
            i,
            ScimEvent {
                event_id: format!("scim-http:{}", new_id()),
                tenant: w.tenant.clone(),
                operation,
                occurred_at,
                user,
            },
            w.policy,
        );
    }
    // The last flush: with `Finish::CommitWithWrites`, it may end the transaction.
    run.flush(tx, t, &mut state, &mut answers, finish).await?;
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(ProviderError::unavailable())))
        .collect())
}

/// What a transaction's user writes decide on, kept current as their runs are written:
/// the users as served, the same users as the unit of work stores them (read and locked
/// once, in id order), and whether the tenant has MindTickle credentials.
struct WriteState {
    users: HashMap<String, ProviderUser>,
    stored: HashMap<String, StoredUser>,
    has_credentials: bool,
}

/// The events decided but not yet written, with the index of the write each answers.
#[derive(Default)]
struct PendingRun {
    events: Vec<(usize, ScimEvent)>,
    policy: DeletePolicy,
    /// The tenant's owner was woken (something to relay or push was written).
    woke: bool,
}

impl PendingRun {
    fn touches(&self, id: &str) -> bool {
        self.events.iter().any(|(_, e)| e.user.id == id)
    }

    fn push(&mut self, index: usize, event: ScimEvent, policy: DeletePolicy) {
        self.policy = policy;
        self.events.push((index, event));
    }

    /// Writes the pending events through the unit of work, answers their writes with the
    /// users it wrote and refreshes `state` for the writes after them.
    async fn flush(
        &mut self,
        tx: &Transaction<'_>,
        t: &str,
        state: &mut WriteState,
        answers: &mut [Option<WriteResult>],
        finish: Finish,
    ) -> Result<(), tokio_postgres::Error> {
        if self.events.is_empty() {
            return Ok(());
        }
        let (indexes, events): (Vec<usize>, Vec<ScimEvent>) = self.events.drain(..).unzip();
        let ids: Vec<String> = events.iter().map(|e| e.user.id.clone()).collect();
        let batch = ScimBatch {
            events,
            delete_policy: self.policy,
            security_events: Vec::new(),
            dead_letters: Vec::new(),
        };
        // The owner (outbox relay, push jobs) is woken once per transaction, by the first
        // flush that writes something.
        let scim::BatchWritten {
            report,
            users: written,
            woke,
        } = scim::apply_batch_returning(
            tx,
            t,
            batch,
            0,
            !self.woke,
            finish,
            Some(scim::Locked {
                users: &state.stored,
                has_credentials: state.has_credentials,
            }),
        )
        .await?;
        self.woke |= woke;
        // The answers come from what the unit of work wrote (its groups unchanged by a
        // user write); a user it did not write is answered as read, and one not read
        // either (nothing to answer from) is read back. (A unit of work that committed
        // wrote every user of its events: nothing is read back after its commit.)
        for w in written {
            let groups = state
                .users
                .get(&w.user.user_id)
                .map_or_else(|| Value::Array(Vec::new()), |u| u.groups.clone());
            state.stored.insert(w.user.user_id.clone(), w.user.clone());
            let u = w.user;
            state.users.insert(
                u.user_id.clone(),
                ProviderUser {
                    user_id: u.user_id,
                    user_name: u.user_name,
                    resource: u.resource,
                    version: u.version,
                    deleted: u.deleted,
                    occurred_at: u.occurred_at,
                    created: w.created,
                    updated: w.updated,
                    groups,
                },
            );
        }
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !state.users.contains_key(id.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let (users, stored) = scim_provider::users_to_write(tx, t, &missing, false).await?;
            state.users.extend(users);
            state.stored.extend(stored);
        }
        for (index, id) in indexes.into_iter().zip(ids) {
            let user = state.users.get(&id).cloned();
            let answer: Box<dyn Any + Send> = Box::new(UserWritten {
                applied: report.applied > 0,
                stored: user,
            });
            answers[index] = Some(Ok(answer));
        }
        Ok(())
    }
}

/// The event a write makes of the current state: its operation and the user it carries.
fn next_state(
    id: &str,
    change: Change,
    ops: Option<Vec<PatchOperation>>,
    current: Option<&ProviderUser>,
) -> Result<(Operation, ScimUser), ProviderError> {
    match (change, current) {
        (Change::Create(body), _) => Ok((Operation::Create, user_from_body(body, id)?)),
        (Change::Replace(body), _) => Ok((Operation::Update, user_from_body(body, id)?)),
        (Change::Patch(_), Some(c)) => {
            let mut resource = c.resource.clone();
            patch::apply(&mut resource, &ops.unwrap_or_default(), &USER_PATCH)?;
            Ok((Operation::Update, user_from_body(resource, id)?))
        }
        (Change::Delete, Some(c)) => {
            // The rules deactivate (or erase) from the stored state; the user carried is
            // the stored one, for the lock and the record.
            let user = user_from_body(c.resource.clone(), id).unwrap_or(ScimUser {
                id: id.to_owned(),
                user_name: c.user_name.clone(),
                email: None,
                role: crate::actors::scim::Role::Rep,
                external_id: None,
                manager_id: None,
                active: false,
                resource: c.resource.clone(),
            });
            Ok((Operation::Delete, user))
        }
        (_, None) => Err(ProviderError::not_found("no such user")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(ops: Value) -> UserWrite {
        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
        UserWrite {
            id: "u1".into(),
            creating: false,
            ops: Some(patch::parse_request(&body).expect("valid PatchOp")),
            change: Change::Patch(body),
            if_match: None,
            tenant: TenantId::parse("acme").expect("tenant id"),
            policy: DeletePolicy::Deactivate,
        }
    }

    /// Only writes that cannot claim a `userName` may share the database with another batch
    /// of the tenant: every way a PATCH can name `userName` counts as claiming one.
    #[test]
    fn writes_that_may_claim_a_user_name_are_told_apart() {
        let plain = patch(json!([{"op": "replace", "path": "title", "value": "Lead"},
                                 {"op": "Replace", "path": "active", "value": "False"},
                                 {"op": "add", "value": {"nickName": "Al"}}]));
        assert!(!plain.may_claim_user_name());
        for ops in [
            json!([{"op": "replace", "path": "userName", "value": "x@acme.test"}]),
            json!([{"op": "replace", "path": "USERNAME", "value": "x@acme.test"}]),
            json!([{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:userName", "value": "x"}]),
            json!([{"op": "replace", "value": {"userName": "x@acme.test"}}]),
            json!([{"op": "replace", "value": {"urn:ietf:params:scim:schemas:core:2.0:User": {"userName": "x"}}}]),
        ] {
            assert!(patch(ops.clone()).may_claim_user_name(), "{ops}");
        }
        let mut delete = plain.clone();
        delete.change = Change::Delete;
        assert!(!delete.may_claim_user_name());
        let mut put = plain;
        put.change = Change::Replace(json!({"userName": "x"}));
        assert!(put.may_claim_user_name());
    }
}
