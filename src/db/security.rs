//! The tenant's `security_events` table: the one insert every security event goes through
//! (an RLS refusal, a SCIM payload naming another tenant, a token used on another
//! tenant's path). Logging and counting are the event's own ([`SecurityEventObserved`]).
//!
//! [`SecurityEventObserved`]: crate::actors::events::SecurityEventObserved

use serde_json::Value;
use tokio_postgres::Transaction;

/// Records one security event inside the tenant's transaction.
pub async fn record(
    tx: &Transaction<'_>,
    tenant: &str,
    kind: &str,
    detail: &Value,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "insert into security_events (tenant_id, kind, detail) values ($1, $2, $3)",
        &[&tenant, &kind, detail],
    )
    .await
    .map(|_| ())
}
