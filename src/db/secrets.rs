//! The tenant's secrets row (`tenant_secrets`, RLS-protected): all of its SQL. Readable only
//! inside that tenant's scoped transaction, so code serving tenant A cannot reach tenant
//! B's credentials.

use tokio_postgres::Transaction;

/// The tenant's MindTickle credentials (client id, secret), if configured.
pub async fn upstream_credentials(
    tx: &Transaction<'_>,
    t: &str,
) -> Result<Option<(String, String)>, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "select upstream_client_id, upstream_client_secret from tenant_secrets
              where tenant_id = $1 and upstream_client_id is not null
                and upstream_client_secret is not null",
            &[&t],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// True when the tenant has MindTickle credentials (so there is an account to push to).
pub async fn has_upstream_credentials(
    tx: &Transaction<'_>,
    t: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "select 1 from tenant_secrets
              where tenant_id = $1 and upstream_client_id is not null",
            &[&t],
        )
        .await?
        .is_some())
}

/// Stores the tenant's MindTickle credentials. False when the tenant has no secrets row.
pub async fn set_upstream_credentials(
    tx: &Transaction<'_>,
    t: &str,
    client_id: &str,
    secret: &str,
) -> Result<bool, tokio_postgres::Error> {
    let n = tx
        .execute(
            "update tenant_secrets set upstream_client_id = $2,
                    upstream_client_secret = $3, rotated_at = now()
              where tenant_id = $1",
            &[&t, &client_id, &secret],
        )
        .await?;
    Ok(n == 1)
}

/// Replaces the tenant's API token hash. False when the tenant has no secrets row.
pub async fn set_api_token_hash(
    tx: &Transaction<'_>,
    t: &str,
    token_sha256: &[u8],
) -> Result<bool, tokio_postgres::Error> {
    let n = tx
        .execute(
            "update tenant_secrets set api_token_sha256 = $2, rotated_at = now()
              where tenant_id = $1",
            &[&t, &token_sha256],
        )
        .await?;
    Ok(n == 1)
}

/// The tenant's API token hash.
pub async fn api_token_hash(
    tx: &Transaction<'_>,
    t: &str,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "select api_token_sha256 from tenant_secrets where tenant_id = $1",
            &[&t],
        )
        .await?
        .map(|r| r.get(0)))
}
