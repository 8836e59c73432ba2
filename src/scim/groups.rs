//! SCIM Groups: the tenant's teams. Attributes in `scim_groups`, members as rows in
//! `scim_group_members` (a PATCH of thousands of members is two statements). A write locks
//! the group, checks `If-Match`, applies the PATCH to the group with its members, checks
//! that `displayName` is unique, writes the difference (a member id that is no user of the
//! tenant yet is kept: it counts nowhere until the user exists), and announces it as `group_changed` on the tenant's `events` topic through
//! the outbox, with a readiness mark (the report's breakdown per group changes).

use std::any::Any;
use std::collections::HashSet;

use serde_json::{json, Value};

use super::writer::{work, Write, WriteLocks};
use super::{
    list_response, meta, new_id, precondition, shape, unavailable, Change, ListQuery, ScimProvider,
    Scope, Served,
};
use crate::actors::readiness::ReadinessMark;
use crate::actors::scim::filter;
use crate::actors::scim::patch;
use crate::actors::scim::projection::{Projection, Selector};
use crate::actors::scim::resource::{
    group_from_body, GroupInput, ProviderError, GROUP_PATCH, GROUP_SCHEMA,
};
use crate::actors::TopicKind;
use crate::db::scim_provider::{self, ProviderGroup};
use crate::db::{notify_tenant_work, outbox, schedule, scim_filter};
use crate::tenant_tx;

/// A group as written, with its members.
type Written = (ProviderGroup, Vec<(String, String)>);

/// The served form of a group with its members.
fn render(g: &ProviderGroup, members: Option<&[(String, String)]>, base: &str) -> Value {
    let mut r = g.resource.clone();
    if let Value::Object(obj) = &mut r {
        obj.insert("id".into(), Value::String(g.group_id.clone()));
        // An empty member list is left out, as every unassigned attribute is.
        if let Some(members) = members.filter(|m| !m.is_empty()) {
            let list: Vec<Value> = members
                .iter()
                .map(|(id, name)| {
                    json!({"value": id, "display": name, "type": "User",
                           "$ref": format!("{base}/Users/{id}")})
                })
                .collect();
            obj.insert("members".into(), Value::Array(list));
        }
        obj.insert(
            "meta".into(),
            meta(
                "Group",
                format!("{base}/Groups/{}", g.group_id),
                g.created,
                g.updated,
                g.version,
            ),
        );
    }
    r
}

/// False when the projection leaves `members` out: they are then not loaded at all (Entra
/// and Okta read groups with `excludedAttributes=members`).
fn wants_members(p: &Projection) -> bool {
    let is_members = |s: &Selector| s.schema.is_none() && s.name == "members";
    match p {
        Projection::All => true,
        Projection::Only(list) => list.iter().any(is_members),
        Projection::Except(list) => !list.iter().any(|s| is_members(s) && s.sub.is_none()),
    }
}

impl ScimProvider {
    /// `GET /Groups/{id}`.
    pub async fn get_group(
        &self,
        scope: &Scope<'_>,
        id: &str,
        q: &ListQuery,
    ) -> Result<Served, ProviderError> {
        let (projection, _) = shape(q, GROUP_SCHEMA)?;
        let with_members = wants_members(&projection);
        let id = id.to_owned();
        let (group, members) = tenant_tx!(self.store, scope.tenant, |tx, t| {
            let Some(g) = scim_provider::group(tx, t, &id, false).await? else {
                return Ok(None);
            };
            let mut m = if with_members {
                scim_provider::members(tx, t, std::slice::from_ref(&id)).await?
            } else {
                Default::default()
            };
            Ok(Some((g, m.remove(&id).unwrap_or_default())))
        })
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ProviderError::not_found("no such group"))?;
        let members = with_members.then_some(members.as_slice());
        Ok(Served {
            resource: projection.apply(&render(&group, members, scope.base_url), &[]),
            version: group.version,
        })
    }

    /// `GET /Groups` and `POST /Groups/.search`.
    pub async fn list_groups(
        &self,
        scope: &Scope<'_>,
        q: &ListQuery,
    ) -> Result<Value, ProviderError> {
        let (projection, page) = shape(q, GROUP_SCHEMA)?;
        let with_members = wants_members(&projection);
        let condition = match q.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            None => None,
            Some(f) => Some(scim_filter::group_condition(&filter::parse(f)?, "u", 4)?),
        };
        let (offset, limit) = (page.offset() as i64, page.count as i64);
        let (total, groups, mut members) = tenant_tx!(self.store, scope.tenant, |tx, t| {
            let (total, groups) =
                scim_provider::list_groups(tx, t, condition.as_ref(), offset, limit).await?;
            let members = if with_members && !groups.is_empty() {
                let ids: Vec<String> = groups.iter().map(|g| g.group_id.clone()).collect();
                scim_provider::members(tx, t, &ids).await?
            } else {
                Default::default()
            };
            Ok((total, groups, members))
        })
        .await
        .map_err(unavailable)?;
        let resources = groups
            .iter()
            .map(|g| {
                let m = members.remove(&g.group_id).unwrap_or_default();
                let m = with_members.then_some(m.as_slice());
                projection.apply(&render(g, m, scope.base_url), &[])
            })
            .collect();
        Ok(list_response(total, page, resources))
    }

    /// POST (`id` none), PUT, PATCH, DELETE of a group. `None` for a DELETE.
    pub async fn write_group(
        &self,
        scope: &Scope<'_>,
        id: Option<&str>,
        change: Change,
        if_match: Option<&str>,
    ) -> Result<Option<Served>, ProviderError> {
        let ops = match &change {
            Change::Patch(body) => Some(patch::parse_request(body)?),
            _ => None,
        };
        let creating = matches!(change, Change::Create(_));
        let id = id.map_or_else(new_id, str::to_owned);
        let if_match = if_match.map(str::to_owned);
        let locks = WriteLocks {
            users: Vec::new(),
            groups: if creating {
                Vec::new()
            } else {
                vec![id.clone()]
            },
        };
        let job = work(move |tx, t| {
            Box::pin(async move {
                let current = if creating {
                    None
                } else {
                    match scim_provider::group(tx, t, &id, true).await? {
                        Some(g) => Some(g),
                        None => return Ok(Err(ProviderError::not_found("no such group"))),
                    }
                };
                if let Some(c) = &current {
                    if let Err(e) = precondition(if_match.as_deref(), c.version) {
                        return Ok(Err(e));
                    }
                }
                let before: Vec<String> = match &current {
                    None => Vec::new(),
                    Some(_) => scim_provider::members(tx, t, std::slice::from_ref(&id))
                        .await?
                        .remove(&id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(u, _)| u)
                        .collect(),
                };
                let input = match (change, &current) {
                    (Change::Delete, _) => None,
                    (Change::Create(body) | Change::Replace(body), _) => {
                        match group_from_body(body) {
                            Ok(g) => Some(g),
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    (Change::Patch(_), Some(c)) => {
                        match patched(c, &before, &ops.unwrap_or_default()) {
                            Ok(g) => Some(g),
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    (Change::Patch(_), None) => None,
                };
                let Some(input) = input else {
                    scim_provider::delete_group(tx, t, &id).await?;
                    announce(tx, t, &id, "DELETE", None, &[], &before).await?;
                    let gone: Box<dyn Any + Send> = Box::new(None::<Written>);
                    return Ok(Ok(gone));
                };
                let renamed = current
                    .as_ref()
                    .is_none_or(|c| !c.display_name.eq_ignore_ascii_case(&input.display_name));
                if renamed
                    && scim_provider::group_name_taken(tx, t, &input.display_name, &id).await?
                {
                    return Ok(Err(ProviderError::uniqueness(
                        "another group of this tenant has this displayName",
                    )));
                }
                let old: HashSet<&String> = before.iter().collect();
                let new: HashSet<&String> = input.members.iter().collect();
                let add: Vec<String> = input
                    .members
                    .iter()
                    .filter(|m| !old.contains(m))
                    .cloned()
                    .collect();
                let remove: Vec<String> = before
                    .iter()
                    .filter(|m| !new.contains(m))
                    .cloned()
                    .collect();
                let version = scim_provider::upsert_group(
                    tx,
                    t,
                    &id,
                    &input.display_name,
                    input.external_id.as_deref(),
                    &input.resource,
                )
                .await?;
                scim_provider::change_members(tx, t, &id, &add, &remove).await?;
                let op = if creating { "CREATE" } else { "UPDATE" };
                announce(tx, t, &id, op, Some((&input, version)), &add, &remove).await?;
                let group = scim_provider::group(tx, t, &id, false).await?;
                let members = scim_provider::members(tx, t, std::slice::from_ref(&id))
                    .await?
                    .remove(&id)
                    .unwrap_or_default();
                let answer: Box<dyn Any + Send> = Box::new(group.map(|g| (g, members)));
                Ok(Ok(answer))
            })
        });
        let outcome = *self
            .writers
            .run(scope.tenant, Write::Work { locks, work: job })
            .await?
            .downcast::<Option<Written>>()
            .map_err(|_| ProviderError::unavailable())?;
        Ok(outcome.map(|(g, members)| Served {
            resource: render(&g, Some(&members), scope.base_url),
            version: g.version,
        }))
    }
}

/// The group after a PATCH: its stored attributes and current members, patched.
fn patched(
    current: &ProviderGroup,
    members: &[String],
    ops: &[patch::PatchOperation],
) -> Result<GroupInput, ProviderError> {
    let mut resource = current.resource.clone();
    if let Value::Object(obj) = &mut resource {
        let list: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
        obj.insert("members".into(), Value::Array(list));
    }
    patch::apply(&mut resource, ops, &GROUP_PATCH)?;
    group_from_body(resource)
}

/// `group_changed` on the tenant's `events` topic through the outbox (with the members
/// added and removed), then a readiness mark when the membership changed. Outbox before
/// the readiness schedule: the tenant's lock order.
async fn announce(
    tx: &tokio_postgres::Transaction<'_>,
    t: &str,
    id: &str,
    operation: &str,
    written: Option<(&GroupInput, i64)>,
    added: &[String],
    removed: &[String],
) -> Result<(), tokio_postgres::Error> {
    let payload = json!({
        "type": "group_changed",
        "tenantId": t,
        "operation": operation,
        "groupId": id,
        "version": written.map(|(_, v)| v),
        "displayName": written.map(|(g, _)| g.display_name.clone()),
        "externalId": written.and_then(|(g, _)| g.external_id.clone()),
        "membersAdded": added,
        "membersRemoved": removed,
    })
    .to_string();
    outbox::append(tx, t, TopicKind::Events, &[id], &[&payload], 0).await?;
    if !added.is_empty() || !removed.is_empty() || operation == "DELETE" {
        schedule::mark_changed(tx, t, ReadinessMark::UsersChanged).await?;
    }
    notify_tenant_work(tx, t).await
}
