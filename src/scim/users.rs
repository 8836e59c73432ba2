//! SCIM Users: reads through compiled filters, writes as SCIM events through the Kafka
//! path's unit of work (`db::scim::apply_batch`) inside one scoped transaction: lock the
//! user, check `If-Match`, apply the PATCH or take the body, check `userName` uniqueness,
//! fold the event, wake the tenant's owner (outbox relay, push job), read the result back.

use std::any::Any;

use serde_json::Value;
use time::OffsetDateTime;

use super::writer::{work, WriteLocks};
use super::{
    list_response, meta, new_id, precondition, shape, unavailable, Change, ListQuery, ScimProvider,
    Scope, Served,
};
use crate::actors::ports::ScimBatch;
use crate::actors::scim::filter;
use crate::actors::scim::patch::{self, PatchOperation};
use crate::actors::scim::resource::{user_from_body, ProviderError, USER_PATCH};
use crate::actors::scim::{
    Operation, ScimEvent, ScimUser, CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA,
};
use crate::db::scim_provider::{self, ProviderUser};
use crate::db::{notify_tenant_work, scim, scim_filter};
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
        let creating = matches!(change, Change::Create(_));
        let id = id.map_or_else(new_id, str::to_owned);
        let if_match = if_match.map(str::to_owned);
        let tenant = scope.tenant.clone();
        let policy = self.delete_policy;
        let locks = WriteLocks {
            users: if creating {
                Vec::new()
            } else {
                vec![id.clone()]
            },
            groups: Vec::new(),
        };
        let job = work(move |tx, t| {
            Box::pin(async move {
                let current = if creating {
                    None
                } else {
                    match scim_provider::user(tx, t, &id, true).await? {
                        Some(u) if !u.deleted => Some(u),
                        _ => return Ok(Err(ProviderError::not_found("no such user"))),
                    }
                };
                if let Some(c) = &current {
                    if let Err(e) = precondition(if_match.as_deref(), c.version) {
                        return Ok(Err(e));
                    }
                }
                let event = match next_state(&id, change, ops, current.as_ref()) {
                    Ok(e) => e,
                    Err(e) => return Ok(Err(e)),
                };
                let (operation, user) = event;
                let renamed = current
                    .as_ref()
                    .is_none_or(|c| !c.user_name.eq_ignore_ascii_case(&user.user_name));
                if operation != Operation::Delete
                    && renamed
                    && scim_provider::user_name_taken(tx, t, &user.user_name, &id).await?
                {
                    return Ok(Err(ProviderError::uniqueness(
                        "another user of this tenant has this userName",
                    )));
                }
                let now = OffsetDateTime::now_utc();
                // After whatever was applied before: an HTTP write always lands on what it read.
                let occurred_at = current.as_ref().map_or(now, |c| {
                    now.max(c.occurred_at + time::Duration::microseconds(1))
                });
                let batch = ScimBatch {
                    events: vec![ScimEvent {
                        event_id: format!("scim-http:{}", new_id()),
                        tenant,
                        operation,
                        occurred_at,
                        user,
                    }],
                    delete_policy: policy,
                    security_events: Vec::new(),
                    dead_letters: Vec::new(),
                };
                let report = scim::apply_batch(tx, t, batch, 0).await?;
                if !report.outbox.is_empty() || report.jobs_queued > 0 {
                    notify_tenant_work(tx, t).await?;
                }
                let stored = scim_provider::user(tx, t, &id, false).await?;
                let answer: Box<dyn Any + Send> = Box::new((report.applied > 0, stored));
                Ok(Ok(answer))
            })
        });
        let outcome = self
            .writers
            .run(scope.tenant, locks, job)
            .await?
            .downcast::<(bool, Option<ProviderUser>)>()
            .map_err(|_| ProviderError::unavailable())?;
        let (applied, stored) = *outcome;
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
