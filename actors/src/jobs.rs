//! The durable per-tenant upstream queue's model: what a job is and the order jobs run in.
//!
//! Jobs are MindTickle calls that must not be lost (a progress sync asked for by a user, a
//! SCIM change pushed to the platform, a background refresh). The store keeps them in
//! `upstream_jobs`; each tenant's job pump drains its own queue under the tenant's rate
//! budget, lowest priority value first.

use serde_json::Value;

/// Priorities of the durable upstream queue (lower runs first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobPriority {
    Interactive = 0,
    ScimPush = 1,
    Background = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    SyncProgress,
    PushUser,
    /// Fetch the course catalog into the tenant's cache namespace.
    RefreshCatalog,
}

impl JobPriority {
    pub const ALL: [JobPriority; 3] = [
        JobPriority::Interactive,
        JobPriority::ScimPush,
        JobPriority::Background,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            JobPriority::Interactive => "interactive",
            JobPriority::ScimPush => "scim_push",
            JobPriority::Background => "background",
        }
    }
    pub fn from_i16(n: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as i16 == n)
    }
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::SyncProgress => "sync_progress",
            JobKind::PushUser => "push_user",
            JobKind::RefreshCatalog => "refresh_catalog",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sync_progress" => Some(JobKind::SyncProgress),
            "push_user" => Some(JobKind::PushUser),
            "refresh_catalog" => Some(JobKind::RefreshCatalog),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub priority: JobPriority,
    pub kind: JobKind,
    /// The user the job is about.
    pub subject: String,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub subject: String,
    pub payload: Value,
}
