//! CI runs every benchmark scenario at its smoke size, so the harness never rots: the
//! scenarios must complete, pass their own self-checks (exactly-once, zero violations,
//! equal figures) and write every figure to the JSON report.

use std::process::Command;

#[test]
fn every_scenario_runs_at_smoke_size_and_checks_itself() {
    let out = std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()));
    // The service binary is built beside this one by `cargo test --workspace`.
    let status = Command::new(env!("CARGO_BIN_EXE_enablement-bench"))
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml"))
        .args(["--scenario", "all", "--size", "smoke", "--out"])
        .arg(&out)
        .env("ENABLEMENT__LOG__FILTER", "warn")
        .status()
        .expect("run enablement-bench");
    assert!(status.success(), "bench failed: {status}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report written"))
            .expect("report is JSON");
    let scenarios = doc["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["scenario"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ingest",
            "isolation",
            "ratelimit",
            "aggregate",
            "tenants",
            "scaleout",
            "scim"
        ]
    );
    for s in scenarios {
        let checks = s["checks"].as_array().map(Vec::len).unwrap_or(0);
        assert!(checks >= 2, "{} checked too little: {s}", s["scenario"]);
        let figures = s["figures"].as_array().expect("figures");
        assert!(
            figures.iter().any(|f| f["target"].is_string()),
            "{} reports no figure with a target",
            s["scenario"]
        );
        assert!(figures.iter().all(|f| f["value"].is_number()), "{s}");
    }
    assert!(doc["machine"]["cores"].as_u64().unwrap_or(0) >= 1);
    let _ = std::fs::remove_file(out);
}
