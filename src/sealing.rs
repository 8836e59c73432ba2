//! Secrets at rest: [`SecretSealer`] encrypts a tenant's MindTickle client secret with an
//! AEAD key the operator supplies (`secrets.keys`, AES-256-GCM from `ring`) before it is
//! written to `tenant_secrets`, and decrypts it inside the tenant's scoped transaction when
//! a job needs it. A database dump without the key reveals no secret.
//!
//! Each ciphertext is stored beside the id of the key that sealed it, so keys rotate: the
//! first key of `secrets.keys` seals, every listed key opens, and `enablement secrets
//! rotate-key` re-seals every tenant's secret with the first key (after which the old key
//! can be removed). The tenant id and the key id are the AEAD's associated data: a
//! ciphertext copied into another tenant's row does not open.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("secrets.keys is not set: an AEAD key is required to store or read tenant secrets")]
    NoKey,
    #[error("secrets.keys: {0}")]
    BadKeySpec(String),
    #[error("secrets.keys has no key with id {0:?} (it sealed this secret): add it back, then run `enablement secrets rotate-key`")]
    UnknownKeyId(String),
    #[error("a sealed secret does not open with its key (wrong key material, or the row was tampered with)")]
    Corrupt,
}

/// The operator's keys; the first one seals.
pub struct SecretSealer {
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SecretSealer")
            .field("key_ids", &ids)
            .finish()
    }
}

fn aad(tenant: &str, key_id: &str) -> Vec<u8> {
    format!("enablement/tenant_secrets/{tenant}/{key_id}").into_bytes()
}

impl SecretSealer {
    /// Parses `"<id>:<64 hex chars>,<id>:<64 hex chars>"` (empty: no key).
    pub fn from_spec(spec: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, hex_key) = entry.split_once(':').ok_or_else(|| {
                SealError::BadKeySpec("each entry is <key id>:<64 hex characters>".into())
            })?;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(SealError::BadKeySpec("a key id is [A-Za-z0-9_-]+".into()));
            }
            if keys.iter().any(|(k, _): &(String, LessSafeKey)| k == id) {
                return Err(SealError::BadKeySpec(format!(
                    "key id {id} is listed twice"
                )));
            }
            let bytes = hex::decode(hex_key.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    SealError::BadKeySpec(format!("key {id} must be 32 bytes as 64 hex characters"))
                })?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| SealError::BadKeySpec(format!("key {id} is unusable")))?;
            keys.push((id.to_owned(), LessSafeKey::new(key)));
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// [`Self::from_spec`], shared (what the store holds).
    pub fn shared(spec: &str) -> Result<std::sync::Arc<Self>, SealError> {
        Self::from_spec(spec).map(std::sync::Arc::new)
    }

    /// The id of the key that seals, if any key is configured.
    pub fn active_key_id(&self) -> Option<&str> {
        self.keys.first().map(|(id, _)| id.as_str())
    }

    /// Seals `plaintext` for `tenant` with the first key: `(key id, nonce || ciphertext)`.
    pub fn seal(&self, tenant: &str, plaintext: &str) -> Result<(String, Vec<u8>), SealError> {
        let (id, key) = self.keys.first().ok_or(SealError::NoKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Corrupt)?;
        let mut buf = plaintext.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(tenant, id)),
            &mut buf,
        )
        .map_err(|_| SealError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok((id.clone(), out))
    }

    /// Opens what [`Self::seal`] produced for `tenant` with key `key_id`.
    pub fn open(&self, tenant: &str, key_id: &str, sealed: &[u8]) -> Result<String, SealError> {
        if self.keys.is_empty() {
            return Err(SealError::NoKey);
        }
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| SealError::UnknownKeyId(key_id.to_owned()))?;
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Corrupt)?;
        let mut buf = ct.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad(tenant, key_id)), &mut buf)
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "k2:0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn seals_opens_rotates_and_binds_to_the_tenant() {
        let old = SecretSealer::from_spec(K1).unwrap();
        let (id, sealed) = old.seal("acme", "the-secret").unwrap();
        assert_eq!(id, "k1");
        assert!(
            !sealed.windows(10).any(|w| w == b"the-secret"),
            "no plaintext in the ciphertext"
        );
        assert_eq!(old.open("acme", "k1", &sealed).unwrap(), "the-secret");
        // Copied into another tenant's row, it does not open.
        assert_eq!(old.open("globex", "k1", &sealed), Err(SealError::Corrupt));
        // After rotation (new key first, old kept), old ciphertexts open and new ones use k2.
        let both = SecretSealer::from_spec(&format!("{K2},{K1}")).unwrap();
        assert_eq!(both.open("acme", "k1", &sealed).unwrap(), "the-secret");
        assert_eq!(both.seal("acme", "x").unwrap().0, "k2");
        // Without the key that sealed it: a clear error.
        let new_only = SecretSealer::from_spec(K2).unwrap();
        assert_eq!(
            new_only.open("acme", "k1", &sealed),
            Err(SealError::UnknownKeyId("k1".into()))
        );
        assert_eq!(
            SecretSealer::from_spec("").unwrap().seal("a", "b"),
            Err(SealError::NoKey)
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(old.open("acme", "k1", &tampered), Err(SealError::Corrupt));
    }

    #[test]
    fn bad_key_specs_are_refused() {
        for bad in [
            "k1",
            "k1:00",
            ":0101",
            "k 1:0101010101010101010101010101010101010101010101010101010101010101",
        ] {
            assert!(
                matches!(SecretSealer::from_spec(bad), Err(SealError::BadKeySpec(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            SecretSealer::from_spec(&format!("{K1},{K1}")),
            Err(SealError::BadKeySpec(_))
        ));
    }
}
