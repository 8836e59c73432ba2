//! Tenant identity: the one validated [`TenantId`] type and the names derived from it.
//!
//! A tenant id ends up inside Kafka topic names, Redis keys (where `*`, `?` and `[` are glob
//! syntax), SQL settings and log lines. Validating it once, at every edge, into a newtype
//! that nothing else can construct closes injection through all of them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest tenant id accepted (the regex `^[a-z0-9][a-z0-9-]{0,62}$`).
pub const MAX_TENANT_ID_LEN: usize = 63;

/// A tenant (customer organisation) id matching `^[a-z0-9][a-z0-9-]{0,62}$`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

/// Why a string is not a tenant id. The message never echoes the rejected input: it may be
/// hostile or huge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_ID_LEN} characters")]
    TooLong,
    #[error("tenant id must start with a lowercase letter or digit")]
    BadFirstChar,
    #[error("tenant id may contain only lowercase letters, digits and '-'")]
    BadChar,
}

impl TenantId {
    /// Validates `raw` into a tenant id.
    pub fn parse(raw: &str) -> Result<Self, TenantIdError> {
        let bytes = raw.as_bytes();
        let first = *bytes.first().ok_or(TenantIdError::Empty)?;
        if bytes.len() > MAX_TENANT_ID_LEN {
            return Err(TenantIdError::TooLong);
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(TenantIdError::BadFirstChar);
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return Err(TenantIdError::BadChar);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Redis key of one of this tenant's cached resources: `tenant:{<id>}:<resource>`.
    /// The braces are a Redis Cluster hash tag, so all of a tenant's keys share one slot.
    pub fn cache_key(&self, resource: &str) -> String {
        format!("tenant:{{{}}}:{resource}", self.0)
    }

    /// The `SCAN MATCH` pattern covering every cache key of this tenant. Safe because a
    /// valid id holds no glob metacharacter; the hash-tag braces are escaped.
    pub fn cache_pattern(&self) -> String {
        format!("tenant:\\{{{}\\}}:*", self.0)
    }

    /// The name of one of this tenant's Kafka topics.
    pub fn topic(&self, prefix: &str, kind: TopicKind) -> String {
        format!("{}{}", self.topic_acl_prefix(prefix), kind.suffix())
    }

    /// The prefix every topic of this tenant starts with, and no other tenant's: the
    /// trailing dot keeps `tenant.acme.` from covering `tenant.acme-corp.*` (the prefixed
    /// ACLs of the README use it).
    pub fn topic_acl_prefix(&self, prefix: &str) -> String {
        format!("{prefix}tenant.{}.", self.0)
    }

    /// The partition of a shared topic holding this tenant's records: Kafka's default
    /// partitioner for a record keyed by the tenant id (murmur2 of the key, sign bit
    /// cleared, modulo the partition count), so any producer keying by tenant id with the
    /// Java client's default (or librdkafka's `murmur2_random`) writes where the consumer
    /// expects it.
    pub fn shared_partition(&self, partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        ((murmur2(self.0.as_bytes()) & 0x7fff_ffff) as u32 % n) as i32
    }

    /// Recovers the tenant id from an inbound topic name `<prefix>tenant.<id>.scim`.
    pub fn from_scim_topic(prefix: &str, topic: &str) -> Option<Self> {
        let rest = topic.strip_prefix(prefix)?.strip_prefix("tenant.")?;
        let id = rest.strip_suffix(".scim")?;
        Self::parse(id).ok()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        TenantId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for TenantId {
    type Err = TenantIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as its default
/// partitioner hashes record keys.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The per-tenant topics. Inbound SCIM events arrive on `Scim`; the others are outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKind {
    Scim,
    UserChanged,
    Events,
    Dlq,
}

impl TopicKind {
    pub const ALL: [TopicKind; 4] = [
        TopicKind::Scim,
        TopicKind::UserChanged,
        TopicKind::Events,
        TopicKind::Dlq,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            TopicKind::Scim => "scim",
            TopicKind::UserChanged => "user_changed",
            TopicKind::Events => "events",
            TopicKind::Dlq => "scim.dlq",
        }
    }

    /// Parses the short names used on the command line and in the outbox table.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "scim" => Some(TopicKind::Scim),
            "user_changed" => Some(TopicKind::UserChanged),
            "events" => Some(TopicKind::Events),
            "dlq" | "scim.dlq" => Some(TopicKind::Dlq),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Scim => "scim",
            TopicKind::UserChanged => "user_changed",
            TopicKind::Events => "events",
            TopicKind::Dlq => "dlq",
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_tenants_acl_prefix_covers_its_topics_and_no_other_tenants() {
        let acme = TenantId::parse("acme").unwrap();
        let corp = TenantId::parse("acme-corp").unwrap();
        let p = acme.topic_acl_prefix("");
        assert_eq!(p, "tenant.acme.");
        for kind in TopicKind::ALL {
            assert!(acme.topic("", kind).starts_with(&p));
            assert!(!corp.topic("", kind).starts_with(&p), "{kind:?}");
        }
        assert_eq!(acme.topic_acl_prefix("prod."), "prod.tenant.acme.");
    }

    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "acme", "0", "acme-corp-2", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_globs_separators_and_case() {
        for (bad, err) in [
            ("", TenantIdError::Empty),
            ("-acme", TenantIdError::BadFirstChar),
            ("Acme", TenantIdError::BadFirstChar),
            ("a*", TenantIdError::BadChar),
            ("a?", TenantIdError::BadChar),
            ("[a]", TenantIdError::BadFirstChar),
            ("a.b", TenantIdError::BadChar),
            ("a:b", TenantIdError::BadChar),
            ("a b", TenantIdError::BadChar),
            ("aé", TenantIdError::BadChar),
        ] {
            assert_eq!(TenantId::parse(bad), Err(err), "{bad:?}");
        }
        assert_eq!(
            TenantId::parse(&"a".repeat(64)),
            Err(TenantIdError::TooLong)
        );
    }

    #[test]
    fn names_derive_from_the_id() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(t.topic("", TopicKind::Scim), "tenant.acme.scim");
        assert_eq!(
            t.topic("prod.", TopicKind::Dlq),
            "prod.tenant.acme.scim.dlq"
        );
        assert_eq!(t.cache_key("roster"), "tenant:{acme}:roster");
        assert_eq!(t.cache_pattern(), "tenant:\\{acme\\}:*");
        assert_eq!(
            TenantId::from_scim_topic("prod.", "prod.tenant.acme.scim"),
            Some(t)
        );
        assert_eq!(TenantId::from_scim_topic("", "tenant.acme.events"), None);
        assert_eq!(TenantId::from_scim_topic("", "tenant.a*.scim"), None);
    }

    #[test]
    fn murmur2_matches_kafkas_own_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        for (key, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
        let t = TenantId::parse("acme").unwrap();
        assert!((0..16).contains(&t.shared_partition(16)));
        assert_eq!(t.shared_partition(1), 0);
        assert_eq!(t.shared_partition(0), 0);
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"a*\"").is_err());
    }
}
