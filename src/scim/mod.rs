//! The SCIM 2.0 service provider (RFC 7643, RFC 7644), one per tenant: what a request to
//! `/scim/v2/{tenant}/...` does, below the HTTP edge (`http::scim`) and above the SQL
//! (`db::scim_provider`, `db::scim`).
//!
//! - [`users`]: Users read through compiled filters; written as SCIM events through the
//!   same unit of work as Kafka events (`db::scim::apply_batch`), so both paths have the
//!   same effects: the users row and its version, the idempotency record, `user_changed`
//!   in the outbox, the MindTickle push job, the readiness mark; the roster cache is
//!   invalidated after the commit.
//! - [`groups`]: Groups (teams) and their members; `group_changed` on the tenant's
//!   `events` topic through the outbox; the readiness report's breakdown per group.
//! - [`discovery`]: `ServiceProviderConfig`, `ResourceTypes`, `Schemas`.
//! - [`writer`]: a tenant's writes committed in groups, one transaction each.
//!
//! Ordering between the two paths (README "SCIM provider"): a tenant's writers commit one
//! at a time (the outbox sequence row), so every change has one place in the tenant's
//! `user_changed` order. A Kafka event applies only when its `occurredAt` is not older than
//! the stored one; an HTTP write is stamped `max(now, stored + 1 µs)`, so it always applies
//! on top of what it read, and a Kafka event older than it is stale. A write answered 2xx
//! has committed.

pub mod discovery;
pub mod groups;
pub mod users;
pub mod writer;

use std::sync::Arc;

use rand::RngCore;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::actors::ports::{RosterCache, StoreError};
use crate::actors::scim::projection::{Page, Projection};
use crate::actors::scim::resource::{ProviderError, LIST_RESPONSE_SCHEMA};
use crate::actors::scim::DeletePolicy;
use crate::actors::TenantId;
use crate::db::TenantScopedStore;

pub use crate::actors::scim::resource::{etag, if_match_admits};

/// One tenant-independent provider: the store, the roster cache, the delete policy.
#[derive(Clone)]
pub struct ScimProvider {
    pub(crate) store: TenantScopedStore,
    pub(crate) cache: Arc<dyn RosterCache>,
    pub(crate) delete_policy: DeletePolicy,
    pub(crate) writers: Arc<writer::TenantWriters>,
}

/// What a request names: the tenant and the provider's base URL for `meta.location`.
pub struct Scope<'a> {
    pub tenant: &'a TenantId,
    /// `<scheme>://<host>/scim/v2/<tenant>` as the client addressed it.
    pub base_url: &'a str,
}

/// A resource answered, with its version (the `ETag` header).
#[derive(Debug, Clone)]
pub struct Served {
    pub resource: Value,
    pub version: i64,
}

/// A write: the body of a POST or PUT, the PatchOp of a PATCH, or a DELETE.
#[derive(Debug, Clone)]
pub enum Change {
    Create(Value),
    Replace(Value),
    Patch(Value),
    Delete,
}

/// The query of a list (`GET` parameters or a `.search` body).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: Option<String>,
    pub start_index: Option<i64>,
    pub count: Option<i64>,
    pub attributes: Option<String>,
    pub excluded_attributes: Option<String>,
}

impl ScimProvider {
    pub fn new(
        store: TenantScopedStore,
        cache: Arc<dyn RosterCache>,
        delete_policy: DeletePolicy,
        writers: Arc<writer::TenantWriters>,
    ) -> Self {
        Self {
            store,
            cache,
            delete_policy,
            writers,
        }
    }
}

impl ScimProvider {
    /// The root `POST /.search` (RFC 7644 §3.4.3): Users, then Groups, as one list. A
    /// filter naming an attribute only one type has selects nothing of the other type.
    pub async fn search_all(
        &self,
        scope: &Scope<'_>,
        q: &ListQuery,
    ) -> Result<Value, ProviderError> {
        let page = Page::from_params(q.start_index, q.count);
        let counting = ListQuery {
            start_index: None,
            count: Some(0),
            ..q.clone()
        };
        let total = |v: &Value| v["totalResults"].as_i64().unwrap_or(0);
        let users = self.list_users(scope, &counting).await.map(|v| total(&v));
        let groups = self.list_groups(scope, &counting).await.map(|v| total(&v));
        let (users_total, groups_total) = match (users, groups) {
            (Err(e), Err(_)) => return Err(e),
            (u, g) => (u.ok(), g.ok()),
        };
        let offset = page.offset() as i64;
        let mut resources: Vec<Value> = Vec::new();
        let take = |v: Value| v["Resources"].as_array().cloned().unwrap_or_default();
        if let Some(ut) = users_total.filter(|ut| offset < *ut && page.count > 0) {
            let slice = ListQuery {
                start_index: Some(offset + 1),
                count: Some((page.count as i64).min(ut - offset)),
                ..q.clone()
            };
            resources.extend(take(self.list_users(scope, &slice).await?));
        }
        let remaining = page.count.saturating_sub(resources.len()) as i64;
        if groups_total.is_some() && remaining > 0 {
            let skip = (offset - users_total.unwrap_or(0)).max(0);
            let slice = ListQuery {
                start_index: Some(skip + 1),
                count: Some(remaining),
                ..q.clone()
            };
            resources.extend(take(self.list_groups(scope, &slice).await?));
        }
        let all = users_total.unwrap_or(0) + groups_total.unwrap_or(0);
        Ok(list_response(all, page, resources))
    }
}

/// A list answer (RFC 7644 §3.4.2).
pub(crate) fn list_response(total: i64, page: Page, resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": total,
        "startIndex": page.start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// `meta` of a resource.
pub(crate) fn meta(
    kind: &str,
    location: String,
    created: OffsetDateTime,
    updated: OffsetDateTime,
    version: i64,
) -> Value {
    let ts = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    json!({
        "resourceType": kind,
        "created": ts(created),
        "lastModified": ts(updated),
        "version": etag(version),
        "location": location,
    })
}

/// A new server-assigned resource id (a random UUID, version 4).
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The projection and page of a list or read.
pub(crate) fn shape(q: &ListQuery, core: &str) -> Result<(Projection, Page), ProviderError> {
    Ok((
        Projection::parse(
            q.attributes.as_deref(),
            q.excluded_attributes.as_deref(),
            core,
        )?,
        Page::from_params(q.start_index, q.count),
    ))
}

/// A store failure answered as 503, logged without detail that could hold data.
pub(crate) fn unavailable(e: StoreError) -> ProviderError {
    tracing::warn!(error = %e, "SCIM request failed in the store");
    ProviderError::unavailable()
}

/// Checks `If-Match` against the current version.
pub(crate) fn precondition(if_match: Option<&str>, version: i64) -> Result<(), ProviderError> {
    match if_match {
        Some(h) if !if_match_admits(h, version) => Err(ProviderError::precondition_failed(version)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_4_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_id());
    }
}
