//! Faults under load, CI-sized: `cargo xtask soak` for 20 s (3 worker processes × 4 owners,
//! Redis killed and restarted, a private PostgreSQL stopped and started, code 17, slow
//! answers and dropped connections).
//!
//! The soak runs its own `redis-server` on a free loopback port (it must be on PATH) and,
//! where initdb and pg_ctl are installed, its own PostgreSQL.

use std::process::Command;

use serde_json::Value;

/// The acceptance figures of issue 7, asserted on a short run.
#[test]
fn soak_loses_nothing_and_stays_under_the_limit_outside_the_documented_window() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "soak",
            "--workers",
            "3",
            "--owners",
            "4",
            "--duration",
            "20",
        ])
        .env("RUST_LOG", "error")
        .output()
        .expect("run cargo xtask soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report\nstdout: {stdout}\nstderr: {stderr}"));
    let n = |name: &str| {
        report[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} missing: {report}"))
    };
    eprintln!("{report}");

    assert!(
        n("requests") > 100,
        "too little work to mean anything: {report}"
    );
    assert_eq!(n("lost"), 0, "requests lost: {report}");
    assert_eq!(
        n("completed") + n("failed"),
        n("requests"),
        "every request completes or fails: {report}"
    );
    // A failure is counted by its message; an empty one would have counted as lost.
    for (reason, _) in report["failed_errors"].as_object().unwrap() {
        assert!(!reason.trim().is_empty(), "{report}");
    }
    assert_eq!(
        n("over_limit_outside_window"),
        0,
        "code 5 outside the documented window: {report}"
    );
    // Issue 15: the local fallback starts from the journal (and waits out what the other
    // workers may have granted), and the restarted Redis is rebuilt from the journals, so
    // neither hand-over costs a code 5 any more (16 before the journal, 13 with only the
    // second hand-over rebuilt).
    assert_eq!(
        n("code5_in_documented_window"),
        0,
        "code 5 at a hand-over: {report}"
    );
    assert_eq!(report["crashed_workers"], serde_json::json!([]), "{report}");
    assert_eq!(
        n("workers_recovered"),
        3,
        "a worker did not recover: {report}"
    );
    // The faults happened: Redis was gone for seconds, and the simulator misbehaved.
    let degraded = report["degraded_seconds_max"].as_f64().unwrap();
    assert!(
        degraded > 1.0 && degraded < 15.0,
        "degraded {degraded} s: {report}"
    );
    assert!(n("recoveries") >= 3, "{report}");
    assert!(
        report["sim"]["faults_served"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["sim"]["max_in_window"].as_u64().unwrap() <= 20,
        "{report}"
    );
    // PostgreSQL, when this machine can run a private one: stopped and started under the
    // workers, who kept going on the last pool they read and read the vault again after.
    if report["postgres_fault"] == "covered" {
        assert!(
            n("vault_reads_failed") > 0,
            "the outage went unseen: {report}"
        );
        assert_eq!(n("workers_vault_recovered"), 3, "{report}");
    } else {
        eprintln!(
            "postgres fault not covered here: {}",
            report["postgres_fault"]
        );
    }
    assert_eq!(report["soak"], "ok", "{report}");
    assert!(out.status.success(), "exit {:?}: {report}", out.status);
}
