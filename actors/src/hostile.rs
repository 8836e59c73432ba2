//! Hostile SCIM payloads for property and fuzz tests: a small seeded generator, public so
//! the integration tests push the same payloads through the real pipeline.
//!
//! Each payload is a valid event of its tenant that was then mutated (or replaced by junk):
//! NUL and other control characters, deep nesting, huge numbers and strings, wrong types,
//! duplicate keys, far-future timestamps, another tenant's id, truncation, invalid UTF-8.
//! Event ids are unique per generator so "applied" and "dead-lettered" can be counted
//! exactly; user ids come from a small pool so updates, deactivations and stale events mix.

use serde_json::{json, Value};

/// What a payload was made from (for reporting; the pipeline decides the outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    Valid,
    ControlCharacters,
    Nul,
    NulInKey,
    DeepNesting,
    HugeNumber,
    HugeString,
    WrongType,
    DuplicateKeys,
    FarFuture,
    OtherTenant,
    MissingField,
    Truncated,
    RandomBytes,
    InvalidUtf8,
    Oversized,
}

/// A deterministic generator of hostile payloads for one tenant.
pub struct HostileEvents {
    state: u64,
    tenant: String,
    n: u64,
}

const KINDS: [Mutation; 16] = [
    Mutation::Valid,
    Mutation::ControlCharacters,
    Mutation::Nul,
    Mutation::NulInKey,
    Mutation::DeepNesting,
    Mutation::HugeNumber,
    Mutation::HugeString,
    Mutation::WrongType,
    Mutation::DuplicateKeys,
    Mutation::FarFuture,
    Mutation::OtherTenant,
    Mutation::MissingField,
    Mutation::Truncated,
    Mutation::RandomBytes,
    Mutation::InvalidUtf8,
    Mutation::Oversized,
];

impl HostileEvents {
    pub fn new(seed: u64, tenant: &str) -> Self {
        Self {
            state: seed | 1,
            tenant: tenant.to_owned(),
            n: 0,
        }
    }

    /// xorshift64*: small, fast and good enough to pick mutations.
    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// The event id the next payload carries (unique per generator).
    fn event(&mut self) -> Value {
        self.n += 1;
        let user = format!("u{}", self.below(50));
        let op = ["CREATE", "UPDATE", "UPDATE", "DELETE"][self.below(4) as usize];
        let at = format!(
            "2026-01-01T{:02}:{:02}:{:02}.{:03}Z",
            self.n / 3_600_000 % 24,
            self.n / 60_000 % 60,
            self.n / 1000 % 60,
            self.n % 1000
        );
        json!({
            "eventId": format!("h-{}", self.n), "tenantId": self.tenant, "operation": op,
            "occurredAt": at,
            "user": {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "id": user, "userName": format!("{user}@{}.test", self.tenant),
                "name": {"givenName": "Ada", "familyName": "Lovelace"},
                "emails": [{"value": format!("{user}@example.test"), "primary": true}],
                "roles": [{"value": "rep"}], "active": true
            }
        })
    }

    /// A string field of the user that the mutation targets.
    fn user_field(&mut self) -> &'static str {
        [
            "userName",
            "id",
            "externalId",
            "displayName",
            "title",
            "nickName",
        ][self.below(6) as usize]
    }

    /// The next payload and the mutation it carries.
    pub fn next_payload(&mut self) -> (Vec<u8>, Mutation) {
        let kind = KINDS[self.below(KINDS.len() as u64) as usize];
        let mut ev = self.event();
        let bytes = match kind {
            Mutation::Valid => ev.to_string().into_bytes(),
            Mutation::ControlCharacters => {
                let c = char::from_u32(1 + self.below(31) as u32).unwrap_or('\u{1}');
                let f = ["displayName", "title", "nickName"][self.below(3) as usize];
                ev["user"][f] = Value::String(format!("a{c}b\u{7f}\u{202e}é😀"));
                ev.to_string().into_bytes()
            }
            Mutation::Nul => {
                let f = self.user_field();
                ev["user"][f] = Value::String(format!("x\u{0}{}", self.n));
                ev.to_string().into_bytes()
            }
            Mutation::NulInKey => {
                ev["user"]["name"]["given\u{0}Name"] = Value::String("x".into());
                ev.to_string().into_bytes()
            }
            Mutation::DeepNesting => {
                let depth = 50 + self.below(400) as usize;
                let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
                let text = ev.to_string();
                text.replacen(
                    "\"active\":true",
                    &format!("\"active\":true,\"x-deep\":{nested}"),
                    1,
                )
                .into_bytes()
            }
            Mutation::HugeNumber => {
                let n = [
                    "1e308",
                    "-1e308",
                    "1e400",
                    "123456789012345678901234567890",
                    "-0.0000000000000000000000001",
                    "18446744073709551616",
                ][self.below(6) as usize];
                let text = ev.to_string();
                let target = ["\"x-n\":", "\"active\":"][self.below(2) as usize];
                text.replacen(
                    "\"active\":true",
                    &format!("\"active\":true,{target}{n}"),
                    1,
                )
                .into_bytes()
            }
            Mutation::HugeString => {
                let len = [300, 5_000, 80_000][self.below(3) as usize];
                let f = self.user_field();
                ev["user"][f] = Value::String("é".repeat(len / 2));
                ev.to_string().into_bytes()
            }
            Mutation::WrongType => {
                let (f, v) = [
                    ("userName", json!(42)),
                    ("active", json!("True")),
                    ("emails", json!({"value": "a@b.c"})),
                    ("schemas", json!("urn:x")),
                    ("roles", json!([{"value": ["rep"]}])),
                    ("name", json!([1, 2])),
                ][self.below(6) as usize]
                    .clone();
                ev["user"][f] = v;
                if self.below(4) == 0 {
                    ev["occurredAt"] = json!(1_700_000_000);
                }
                ev.to_string().into_bytes()
            }
            Mutation::DuplicateKeys => {
                let text = ev.to_string();
                let extra = format!("\"userName\":\"dup{}\",", self.n);
                text.replacen("\"userName\":", &format!("{extra}\"userName\":"), 1)
                    .into_bytes()
            }
            Mutation::FarFuture => {
                let y = [2999, 9999, 2200][self.below(3) as usize];
                ev["occurredAt"] = Value::String(format!("{y}-01-01T00:00:00Z"));
                ev.to_string().into_bytes()
            }
            Mutation::OtherTenant => {
                ev["tenantId"] = Value::String(format!("{}-other", self.tenant));
                ev.to_string().into_bytes()
            }
            Mutation::MissingField => {
                let f = ["eventId", "operation", "occurredAt", "user", "tenantId"]
                    [self.below(5) as usize];
                if let Some(o) = ev.as_object_mut() {
                    o.remove(f);
                }
                ev.to_string().into_bytes()
            }
            Mutation::Truncated => {
                let mut b = ev.to_string().into_bytes();
                let cut = self.below(b.len() as u64) as usize;
                b.truncate(cut);
                b
            }
            Mutation::RandomBytes => {
                let len = self.below(200) as usize;
                (0..len).map(|_| self.next_u64() as u8).collect()
            }
            Mutation::InvalidUtf8 => {
                let mut b = ev.to_string().into_bytes();
                let at = b.iter().position(|c| *c == b'@').unwrap_or(0);
                b.splice(at..at, [0xff, 0xfe, 0xc3]);
                b
            }
            Mutation::Oversized => {
                ev["user"]["x-blob"] = Value::String("z".repeat(70 * 1024));
                ev.to_string().into_bytes()
            }
        };
        (bytes, kind)
    }
}
