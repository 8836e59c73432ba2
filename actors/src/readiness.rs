//! The team readiness report of a tenant and the rule that makes one provisional.
//!
//! The figures are computed by PostgreSQL (the service never loads progress rows); this
//! module names what they mean and decides, from the freshness figures the query returns,
//! whether the report is final.
//!
//! Definitions (also in the README):
//! - `avgScore`: mean of the latest known score per active user and course (the score held
//!   by `course_progress`, written by progress syncs and quiz results); null scores are
//!   excluded; null when there is no score.
//! - `completionRate`: completed / assigned course-progress rows of active users; null when
//!   nothing is assigned.
//! - Deactivated users, and their progress, are excluded everywhere.

use serde::{Deserialize, Serialize};

/// Why a report is provisional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionalReason {
    /// Some included progress was synced longer ago than the configured freshness.
    StaleProgress,
    /// The tenant still has progress syncs queued.
    SyncPending,
}

/// What started an aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregationTrigger {
    /// `POST /api/tenants/{t}/readiness/aggregate`.
    Manual,
    /// The inputs changed (users, progress, quiz results) and the debounce passed.
    Changed,
    /// The sync work a provisional report waited for has settled.
    Scheduled,
}

impl AggregationTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Changed => "changed",
            Self::Scheduled => "scheduled",
        }
    }
}

/// Why a tenant's readiness inputs are marked changed (the debounced re-aggregation's
/// `reason`). Decided by the rules of each change (a SCIM batch, a sync, a quiz result),
/// written by the database unit of work of that change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadinessMark {
    /// Users changed by a SCIM batch.
    UsersChanged,
    /// Course progress synced from MindTickle.
    ProgressSynced,
    /// A quiz result recorded.
    QuizRecorded,
    /// The sync work a provisional report waited for has settled (failed syncs included).
    SyncSettled,
}

impl ReadinessMark {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsersChanged => "users_changed",
            Self::ProgressSynced => "progress_synced",
            Self::QuizRecorded => "quiz_recorded",
            Self::SyncSettled => "sync_settled",
        }
    }
}

/// Figures of one slice of the tenant (the whole tenant, a course, a manager's team).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessFigures {
    /// Course-progress rows of active users.
    pub assigned: i64,
    pub completed: i64,
    /// Rows with a score.
    pub scored: i64,
    pub avg_score: Option<f64>,
    pub completion_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CourseReadiness {
    pub course_id: String,
    pub title: String,
    #[serde(flatten)]
    pub figures: ReadinessFigures,
}

/// A manager's team: the active users whose SCIM enterprise `manager` is this manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamReadiness {
    pub manager_id: String,
    /// The manager's user name when the manager is a known user of the tenant.
    pub manager_user_name: Option<String>,
    pub team_size: i64,
    #[serde(flatten)]
    pub figures: ReadinessFigures,
}

/// A SCIM group (a team as the identity provider defines it): its active members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupReadiness {
    pub group_id: String,
    pub display_name: String,
    /// Active users among the group's members.
    pub members: i64,
    #[serde(flatten)]
    pub figures: ReadinessFigures,
}

/// A tenant's team readiness report. Timestamps are RFC 3339 as PostgreSQL rendered them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessReport {
    pub tenant_id: String,
    /// Set once stored (the id of the report in the tenant's history).
    #[serde(default)]
    pub report_id: Option<i64>,
    #[serde(flatten)]
    pub figures: ReadinessFigures,
    pub active_users: i64,
    #[serde(default)]
    pub provisional: bool,
    #[serde(default)]
    pub provisional_reasons: Vec<ProvisionalReason>,
    /// When the report was computed (the transaction's time).
    pub computed_at: String,
    /// Oldest sync time of the included progress: the figures are at least this fresh.
    pub inputs_as_of: Option<String>,
    /// Newest sync time of the included progress.
    pub newest_input_at: Option<String>,
    /// Included progress rows older than the freshness.
    pub stale_progress_rows: i64,
    /// Progress syncs of the tenant still queued when the report was computed.
    pub pending_sync_jobs: i64,
    /// Stale users for whom a refresh sync was queued by this aggregation.
    #[serde(default)]
    pub refresh_syncs_queued: i64,
    pub freshness_ms: i64,
    pub by_course: Vec<CourseReadiness>,
    pub by_team: Vec<TeamReadiness>,
    /// Per SCIM group, beside the manager breakdown (every group, even empty).
    #[serde(default)]
    pub by_group: Vec<GroupReadiness>,
    #[serde(default = "default_trigger")]
    pub trigger: AggregationTrigger,
    /// The instance that computed it.
    #[serde(default)]
    pub computed_by: String,
    #[serde(default)]
    pub duration_ms: f64,
}

fn default_trigger() -> AggregationTrigger {
    AggregationTrigger::Manual
}

impl ReadinessReport {
    /// Applies the provisional rule: a report is final only when every included progress row
    /// is within the freshness and no progress sync of the tenant is queued.
    pub fn classify(&mut self) {
        self.provisional_reasons =
            provisional_reasons(self.stale_progress_rows, self.pending_sync_jobs);
        self.provisional = !self.provisional_reasons.is_empty();
    }

    /// The compact form announced as `readiness.aggregated` (no breakdowns).
    pub fn announcement(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "readiness.aggregated",
            "tenantId": self.tenant_id,
            "reportId": self.report_id,
            "avgScore": self.figures.avg_score,
            "completionRate": self.figures.completion_rate,
            "provisional": self.provisional,
            "provisionalReasons": self.provisional_reasons,
            "computedAt": self.computed_at,
            "inputsAsOf": self.inputs_as_of,
            "trigger": self.trigger,
        })
    }
}

pub fn provisional_reasons(stale_rows: i64, pending_syncs: i64) -> Vec<ProvisionalReason> {
    let mut reasons = Vec::new();
    if stale_rows > 0 {
        reasons.push(ProvisionalReason::StaleProgress);
    }
    if pending_syncs > 0 {
        reasons.push(ProvisionalReason::SyncPending);
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_only_when_fresh_and_nothing_queued() {
        assert!(provisional_reasons(0, 0).is_empty());
        assert_eq!(
            provisional_reasons(3, 0),
            vec![ProvisionalReason::StaleProgress]
        );
        assert_eq!(
            provisional_reasons(0, 1),
            vec![ProvisionalReason::SyncPending]
        );
        assert_eq!(provisional_reasons(1, 1).len(), 2);
    }

    #[test]
    fn reads_the_query_shape_and_classifies() {
        let raw = serde_json::json!({
            "tenantId": "acme", "assigned": 4, "completed": 1, "scored": 2,
            "avgScore": 75.0, "completionRate": 0.25, "activeUsers": 3,
            "computedAt": "2026-11-28T03:00:00+00:00", "inputsAsOf": null,
            "newestInputAt": null, "staleProgressRows": 0, "pendingSyncJobs": 2,
            "freshnessMs": 1000, "byCourse": [], "byTeam": [
                {"managerId": "m1", "managerUserName": null, "teamSize": 0, "assigned": 0,
                 "completed": 0, "scored": 0, "avgScore": null, "completionRate": null}]
        });
        let mut r: ReadinessReport = serde_json::from_value(raw).unwrap();
        r.classify();
        assert!(r.provisional);
        assert_eq!(r.provisional_reasons, vec![ProvisionalReason::SyncPending]);
        assert_eq!(r.by_team[0].figures.completion_rate, None);
        let out = serde_json::to_value(&r).unwrap();
        assert_eq!(out["completionRate"], 0.25);
        assert_eq!(out["byTeam"][0]["teamSize"], 0);
        assert_eq!(r.announcement()["type"], "readiness.aggregated");
    }
}
