//! The operator CLI as checks outside the test suite use it: exit codes, one JSON object per
//! line on stdout, clear errors naming the setting.

mod common;

use common::redis_server::PrivateRedis;

use std::process::{Command, Output};

use serde_json::Value;

fn run(prefix: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_torn-quota"));
    cmd.args(args)
        .env("REDIS_URL", common::redis_url())
        .env("TORN_QUOTA_KEY_PREFIX", prefix)
        .env("TORN_QUOTA_LIMIT", "2")
        .env("TORN_QUOTA_WINDOW_MS", "5000")
        .env_remove("TORN_QUOTA_CONFIG")
        .env_remove("TORN_QUOTA_MODE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run torn-quota")
}

fn json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no JSON on stdout; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(last).unwrap()
}

#[tokio::test]
async fn acquire_exit_codes_and_json() {
    common::redis_conn().await;
    let prefix = common::unique_prefix("cli");
    for expected_remaining in [1, 0] {
        let out = run(&prefix, &["acquire", "--user", "77"], &[]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v = json(&out);
        assert_eq!(v["granted"], true);
        assert_eq!(v["remaining"], expected_remaining);
        assert_eq!(v["retry_after_ms"], 0);
        assert_eq!(v["enforced_by"], "per-user");
    }
    let out = run(&prefix, &["acquire", "--user", "77"], &[]);
    assert_eq!(out.status.code(), Some(1), "refused exits 1");
    let v = json(&out);
    assert_eq!(v["granted"], false);
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);

    let status = json(&run(&prefix, &["status", "--user", "77"], &[]));
    assert_eq!(status["used"], 2);
    assert_eq!(status["limit"], 2);
    assert_eq!(status["remaining"], 0);
    assert!(status["reset_after_ms"].as_u64().unwrap() > 4_000);
}

#[tokio::test]
async fn set_limit_is_seen_by_another_process() {
    common::redis_conn().await;
    let prefix = common::unique_prefix("cli");
    let out = run(&prefix, &["set-limit", "--user", "78", "--limit", "3"], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for _ in 0..3 {
        assert_eq!(
            run(&prefix, &["acquire", "--user", "78"], &[])
                .status
                .code(),
            Some(0)
        );
    }
    assert_eq!(
        run(&prefix, &["acquire", "--user", "78"], &[])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    for (env, setting) in [
        (("TORN_QUOTA_LIMIT", "0"), "TORN_QUOTA_LIMIT"),
        (("TORN_QUOTA_WINDOW_MS", "0"), "TORN_QUOTA_WINDOW_MS"),
        (("REDIS_URL", "localhost:6379 oops"), "REDIS_URL"),
        (("TORN_QUOTA_MODE", "legacy"), "TORN_QUOTA_MODE"),
    ] {
        let out = run("tq-cli-bad", &["acquire", "--user", "1"], &[env]);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(setting), "{env:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing on stdout for an error");
    }
    let out = run(
        "tq-cli-bad",
        &["acquire", "--user", "1", "--cost", "0"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "clap refuses a zero cost");
}

#[test]
fn unreachable_redis_exits_2_within_the_timeout() {
    let started = std::time::Instant::now();
    let out = run(
        "tq-cli-down",
        &["acquire", "--user", "1"],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS", "200"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis unavailable"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn demo_runs_a_batch_at_full_quota_without_code_5() {
    let out = Command::new(env!("CARGO_BIN_EXE_torn-quota"))
        // A wide margin: the machine may be busy with other tests.
        .args([
            "demo",
            "--requests",
            "60",
            "--limit",
            "10",
            "--window-ms",
            "400",
            "--margin-ms",
            "60",
        ])
        .env("REDIS_URL", common::redis_url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("backend: redis"), "{stderr}");
    let v = json(&out);
    assert_eq!(v["requests"], 60);
    assert_eq!(v["succeeded"], 60);
    assert_eq!(v["code5_answers"], 0);
    assert!(v["max_in_window"].as_u64().unwrap() <= 10, "{v}");
    assert_eq!(v["keys_dropped"], 2, "the paused key and the unknown one");
}

#[test]
fn demo_without_redis_runs_in_memory_and_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_torn-quota"))
        .args([
            "demo",
            "--requests",
            "30",
            "--limit",
            "10",
            "--window-ms",
            "400",
            "--margin-ms",
            "60",
        ])
        // Nothing listens on port 1.
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("backend: in-memory"), "{stderr}");
    assert_eq!(json(&out)["code5_answers"], 0);
}

#[test]
fn user_0_is_refused_by_every_command_taking_a_torn_user() {
    for args in [
        &["acquire", "--user", "0"][..],
        &["status", "--user", "0"],
        &["set-limit", "--user", "0", "--limit", "3"],
        &["rollout", "route", "--user", "0"],
    ] {
        let out = run("tq-cli-user0", args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not a Torn user id"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn an_error_chain_shows_each_cause_once() {
    // Redis's error shows its I/O cause in its own text and as its source too.
    let out = run(
        "tq-cli-chain",
        &["status", "--user", "1"],
        &[("REDIS_URL", "redis://127.0.0.1:1")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.trim_start().starts_with("caused by:"))
        .collect();
    assert!(lines[0].contains("redis unavailable"), "{stderr}");
    let causes: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_start().trim_start_matches("caused by: "))
        .collect();
    for (i, a) in causes.iter().enumerate() {
        for b in &causes[i + 1..] {
            assert!(!a.contains(b), "a cause repeats: {stderr}");
        }
    }
}

#[test]
fn acquire_wait_timeout_is_the_whole_calls_deadline() {
    let redis = PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // A working call first, so the frozen one below is a slow answer, not a refused
    // connection.
    let env = [
        ("REDIS_URL", url.as_str()),
        ("TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS", "5000"),
        ("TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS", "5000"),
    ];
    let out = run("tq-cli-deadline", &["acquire", "--user", "3"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    redis.signal("-STOP");
    let started = std::time::Instant::now();
    let out = run(
        "tq-cli-deadline",
        &["acquire", "--user", "3", "--wait", "--timeout-ms", "300"],
        &env,
    );
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "took {took:?} for a 300 ms deadline"
    );
    assert_eq!(out.status.code(), Some(1), "not granted: {out:?}");
    let v = json(&out);
    assert_eq!(v["granted"], false);
    assert_eq!(v["timed_out"], true);
}
