//! API tokens: generated once, shown once, stored only as SHA-256.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random tenant API token (`ent_` + 64 hex characters, 256 bits).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("ent_{}", hex::encode(bytes))
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
    fn tokens_are_unique_and_hash_stably() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with("ent_") && a.len() == 68);
        assert_eq!(hash(&a), hash(&a));
        assert!(constant_time_eq(&hash(&a), &hash(&a)));
        assert!(!constant_time_eq(&hash(&a), &hash(&b)));
    }
}
