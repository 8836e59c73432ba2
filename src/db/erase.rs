//! `tenant delete <id> --erase`: every row of one tenant, removed in one transaction as the
//! owner role (`postgres.migrate_url`): the service role deletes almost nothing by design,
//! and erasure is an operator's act, not the service's. The tables are found by their
//! `tenant_id` column, so a table added later is erased without a change here; the
//! `tenants` row goes last (every table references it) and an audit record in
//! `tenant_erasures` is all that stays.

use std::collections::BTreeMap;

use super::{DbError, PgTarget};
use crate::actors::TenantId;
use crate::config::PostgresConfig;

/// Rows deleted per table; empty when the tenant did not exist.
pub type ErasedRows = BTreeMap<String, u64>;

pub async fn erase_tenant(cfg: &PostgresConfig, tenant: &TenantId) -> Result<ErasedRows, DbError> {
    let target = PgTarget::new(cfg, &cfg.migrate_url, "postgres.migrate_url")?;
    let mut client = target.connect().await?;
    let q = |e: tokio_postgres::Error| DbError::Connect(super::redact(e));
    let tx = client.transaction().await.map_err(q)?;
    let exists = tx
        .query_opt(
            "select 1 from tenants where tenant_id = $1 for update",
            &[&tenant.as_str()],
        )
        .await
        .map_err(q)?
        .is_some();
    if !exists {
        return Ok(ErasedRows::new());
    }
    let tables: Vec<String> = tx
        .query(
            "select c.table_name::text from information_schema.columns c
               join information_schema.tables t using (table_schema, table_name)
              where c.column_name = 'tenant_id' and c.table_schema = current_schema()
                and t.table_type = 'BASE TABLE'
                and c.table_name not in ('tenants', 'tenant_erasures')
              order by 1",
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut erased = ErasedRows::new();
    for table in tables {
        // Names come from the catalog, quoted as identifiers.
        let sql = format!(
            "delete from \"{}\" where tenant_id = $1",
            table.replace('"', "\"\"")
        );
        let n = tx.execute(&sql, &[&tenant.as_str()]).await.map_err(q)?;
        erased.insert(table, n);
    }
    let n = tx
        .execute(
            "delete from tenants where tenant_id = $1",
            &[&tenant.as_str()],
        )
        .await
        .map_err(q)?;
    erased.insert("tenants".into(), n);
    let rows = serde_json::to_value(&erased).unwrap_or_default();
    tx.execute(
        "insert into tenant_erasures (tenant_id, rows) values ($1, $2)",
        &[&tenant.as_str(), &rows],
    )
    .await
    .map_err(q)?;
    tx.commit().await.map_err(q)?;
    Ok(erased)
}
