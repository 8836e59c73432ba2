//! `enablement status`: the fleet as one table (or JSON), once or refreshed with `--watch`.
//! Rendering only: the rows come from [`crate::operations::status`].

use std::fmt::Write as _;
use std::time::Duration;

use crate::db::Registry;
use crate::operations::{status, TenantStatus};

use super::AppError;

/// Prints the status once, or every `watch` until interrupted.
pub async fn run(registry: &Registry, json: bool, watch: Option<u64>) -> Result<(), AppError> {
    loop {
        let rows = status(registry)
            .await
            .map_err(|e| AppError::Events(e.to_string()))?;
        let text = if json {
            serde_json::to_string_pretty(&rows).map_err(|e| AppError::Output(e.to_string()))?
        } else {
            table(&rows)
        };
        let Some(secs) = watch else {
            println!("{text}");
            return Ok(());
        };
        // Clear the screen, then the table: a terminal shows one current picture.
        println!("\x1b[2J\x1b[H{text}");
        tokio::select! {
            _ = crate::signal::shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(secs.max(1))) => {}
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One line per tenant under a header; columns sized to their widest cell.
pub fn table(rows: &[TenantStatus]) -> String {
    let header = [
        "TENANT",
        "STATUS",
        "TOPICS",
        "STATE",
        "INSTANCE",
        "LAG",
        "EVENTS/1H",
        "DLQ/1H",
        "QUEUE i/s/b",
        "OUTBOX",
        "LAST REPORT",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let f = &r.figures;
            let q = |p: &str| f.pending_jobs.get(p).copied().unwrap_or(0);
            let report = match (&f.last_report_at, f.last_report_provisional) {
                (Some(at), provisional) => format!(
                    "{}{}",
                    at.format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second]Z"
                    ))
                    .unwrap_or_default(),
                    if provisional == Some(true) {
                        " (provisional)"
                    } else {
                        ""
                    }
                ),
                (None, _) => "none".to_owned(),
            };
            vec![
                r.tenant.to_string(),
                r.status.clone(),
                r.topics.to_owned(),
                r.state.clone(),
                opt(r.instance.as_deref()),
                opt(r.lag_messages),
                opt(f.events_last_hour),
                opt(f.dead_letters_last_hour),
                format!(
                    "{}/{}/{}",
                    q("interactive"),
                    q("scim_push"),
                    q("background")
                ),
                f.unrelayed_rows.to_string(),
                report,
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(&widths).enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    let _ = write!(out, "{} tenants", rows.len());
    out
}
