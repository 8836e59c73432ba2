//! The tenant's secrets row (`tenant_secrets`, RLS-protected): all of its SQL. Readable only
//! inside that tenant's scoped transaction, so code serving tenant A cannot reach tenant
//! B's credentials.

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

/// The tenant's MindTickle credentials as stored: the client id and the secret, sealed
/// (`(key id, nonce || ciphertext)`) or, left by a version before sealing, in plaintext.
pub struct StoredCredentials {
    pub client_id: String,
    pub sealed: Option<(String, Vec<u8>)>,
    pub legacy_plaintext: Option<String>,
}

/// The tenant's stored MindTickle credentials, if configured.
pub async fn upstream_credentials(
    tx: &Transaction<'_>,
    t: &str,
) -> Result<Option<StoredCredentials>, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "select upstream_client_id, upstream_secret_key_id, upstream_secret_sealed,
                    upstream_client_secret
               from tenant_secrets
              where tenant_id = $1 and upstream_client_id is not null
                and (upstream_secret_sealed is not null or upstream_client_secret is not null)",
            &[&t],
        )
        .await?
        .map(|r| StoredCredentials {
            client_id: r.get(0),
            sealed: r
                .get::<_, Option<String>>(1)
                .zip(r.get::<_, Option<Vec<u8>>>(2)),
            legacy_plaintext: r.get(3),
        }))
}

/// True when the tenant has MindTickle credentials (so there is an account to push to).
pub async fn has_upstream_credentials(
    tx: &Transaction<'_>,
    t: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(!super::statements::query_typed(
        tx,
        "select 1 from tenant_secrets
              where tenant_id = $1 and upstream_client_id is not null",
        &[(&t, Type::TEXT)],
    )
    .await?
    .is_empty())
}

/// Stores the tenant's MindTickle credentials, the secret sealed, and clears any plaintext
/// an older version left. False when the tenant has no secrets row.
pub async fn set_upstream_credentials(
    tx: &Transaction<'_>,
    t: &str,
    client_id: &str,
    key_id: &str,
    sealed: &[u8],
) -> Result<bool, tokio_postgres::Error> {
    let n = tx
        .execute(
            "update tenant_secrets set upstream_client_id = $2, upstream_secret_key_id = $3,
                    upstream_secret_sealed = $4, upstream_client_secret = null,
                    rotated_at = now()
              where tenant_id = $1",
            &[&t, &client_id, &key_id, &sealed],
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

/// Replaces the tenant's SCIM token hash (enables the SCIM provider for the tenant; the
/// previous token stops working). False when the tenant has no secrets row.
pub async fn set_scim_token_hash(
    tx: &Transaction<'_>,
    t: &str,
    token_sha256: &[u8],
) -> Result<bool, tokio_postgres::Error> {
    let n = tx
        .execute(
            "update tenant_secrets set scim_token_sha256 = $2, scim_token_rotated_at = now()
              where tenant_id = $1",
            &[&t, &token_sha256],
        )
        .await?;
    Ok(n == 1)
}

/// The tenant's SCIM token hash; `None` when the tenant has no SCIM provider enabled.
pub async fn scim_token_hash(
    tx: &Transaction<'_>,
    t: &str,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "select scim_token_sha256 from tenant_secrets where tenant_id = $1",
            &[&t],
        )
        .await?
        .and_then(|r| r.get(0)))
}
