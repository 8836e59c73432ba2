//! API tokens: generated once, shown once, stored only as SHA-256.
//!
//! A tenant token names its tenant (`ent_<tenant>.<64 hex>`), so it is checked inside that
//! tenant's own RLS scope: no global token table, and a token presented on another tenant's
//! path is recognised as such (404 plus a security event) rather than as garbage (401).

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::actors::TenantId;

/// A new random API token for `tenant` (256 random bits).
pub fn generate(tenant: &TenantId) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("ent_{tenant}.{}", hex::encode(bytes))
}

/// A new random SCIM bearer token for `tenant` (`scim_<tenant>.<64 hex>`): a credential
/// of its own, held by the tenant's identity provider, never valid on the tenant API.
pub fn generate_scim(tenant: &TenantId) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("scim_{tenant}.{}", hex::encode(bytes))
}

/// The tenant a SCIM token claims to belong to (unverified).
pub fn claimed_scim_tenant(token: &str) -> Option<TenantId> {
    claimed(token.strip_prefix("scim_")?)
}

/// The tenant a token claims to belong to (unverified).
pub fn claimed_tenant(token: &str) -> Option<TenantId> {
    claimed(token.strip_prefix("ent_")?)
}

fn claimed(rest: &str) -> Option<TenantId> {
    let (tenant, secret) = rest.rsplit_once('.')?;
    (secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| TenantId::parse(tenant).ok())
        .flatten()
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_name_their_tenant_and_hash_stably() {
        let t = TenantId::parse("acme").unwrap();
        let (a, b) = (generate(&t), generate(&t));
        assert_ne!(a, b);
        assert!(a.starts_with("ent_acme.") && a.len() == 4 + 5 + 64);
        assert_eq!(claimed_tenant(&a), Some(t.clone()));
        assert_eq!(claimed_tenant("ent_a*.00"), None);
        assert_eq!(claimed_tenant("garbage"), None);
        let scim = generate_scim(&t);
        assert_eq!(claimed_scim_tenant(&scim), Some(t.clone()));
        assert_eq!(claimed_tenant(&scim), None, "a SCIM token is no API token");
        assert_eq!(claimed_scim_tenant(&a), None);
        assert_eq!(hash(&a), hash(&a));
        assert!(constant_time_eq(&hash(&a), &hash(&a)));
        assert!(!constant_time_eq(&hash(&a), &hash(&b)));
    }
}
