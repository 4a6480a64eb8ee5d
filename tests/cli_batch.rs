//! `torn-quota batch` as an operator runs it, as a process: its files (the output replaced
//! only at the end, never the input), its signals (SIGTERM like Ctrl-C) and its request
//! lines (a bad one fails alone, unsent). Real Redis and the simulator.

mod common;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use torn_quota::sim::{SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::{AccessLevel, TornUserId};

const KEY: &str = "BatchCliKeyOwnr4";

struct Files {
    dir: PathBuf,
    keys: PathBuf,
    input: PathBuf,
    output: PathBuf,
}

impl Files {
    fn new(name: &str, requests: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(common::unique_prefix(name));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("keys.txt");
        std::fs::write(&keys, format!("{KEY}\n")).unwrap();
        let input = dir.join("input.txt");
        std::fs::write(&input, requests.join("\n")).unwrap();
        let output = dir.join("output.jsonl");
        Self {
            dir,
            keys,
            input,
            output,
        }
    }

    /// Every file in the directory, by name.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn sim(limit: u32, window: Duration) -> SimHandle {
    let config = SimConfig::builder()
        .limit(NonZeroU32::new(limit).unwrap())
        .window(window)
        .build()
        .unwrap();
    Simulator::start(
        [SimKey::new(KEY, TornUserId::new(4), AccessLevel::Full)],
        config,
    )
    .await
    .unwrap()
}

fn batch(
    prefix: &str,
    base_url: &str,
    limit: u32,
    window: Duration,
    keys: &Path,
    input: &Path,
    output: &Path,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_torn-quota"));
    cmd.arg("batch")
        .arg("--keys")
        .arg(keys)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .env("REDIS_URL", common::redis_url())
        .env("TORN_QUOTA_KEY_PREFIX", prefix)
        .env("TORN_QUOTA_LIMIT", limit.to_string())
        .env("TORN_QUOTA_WINDOW_MS", window.as_millis().to_string())
        .env("TORN_QUOTA_SAFETY_MARGIN_MS", "20")
        .env("TORN_API_BASE_URL", base_url)
        .env_remove("TORN_QUOTA_CONFIG")
        .env_remove("TORN_QUOTA_MODE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the command off the runtime's threads, so the simulator keeps serving.
async fn finish(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn output_equal_to_input_is_refused_however_spelled() {
    common::redis_conn().await;
    let sim = sim(20, Duration::from_secs(1)).await;
    let f = Files::new("cli-same", &["user/4/basic"]);
    let original = std::fs::read(&f.input).unwrap();
    let link = f.dir.join("link-to-input");
    std::os::unix::fs::symlink(&f.input, &link).unwrap();
    let relative = f.dir.join(".").join("input.txt");
    let prefix = common::unique_prefix("cli-same");
    let window = Duration::from_secs(1);
    for output in [&f.input, &relative, &link, &f.keys] {
        let out = finish(batch(
            &prefix,
            &sim.base_url(),
            20,
            window,
            &f.keys,
            &f.input,
            output,
        ))
        .await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            output.display(),
            stderr(&out)
        );
        assert!(stderr(&out).contains("same file"), "{}", stderr(&out));
    }
    assert_eq!(
        std::fs::read(&f.input).unwrap(),
        original,
        "the input is intact"
    );
    assert_eq!(
        std::fs::read_to_string(&f.keys).unwrap(),
        format!("{KEY}\n")
    );
    assert_eq!(sim.counters().requests, 0, "nothing was sent");
}

#[test]
fn a_run_that_fails_at_once_leaves_the_previous_output() {
    let f = Files::new("cli-keep", &["user/4/basic"]);
    std::fs::write(&f.output, "the previous results\n").unwrap();
    let before = f.names();
    let out = batch(
        "tq-cli-keep",
        "http://127.0.0.1:1",
        20,
        Duration::from_secs(1),
        &f.keys,
        &f.input,
        &f.output,
    )
    // Nothing listens on port 1, and the default policy fails fast.
    .env("REDIS_URL", "redis://127.0.0.1:1")
    .env("TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS", "200")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&f.output).unwrap(),
        "the previous results\n"
    );
    assert_eq!(f.names(), before, "no temporary file left behind");
}

#[tokio::test]
async fn a_finished_run_replaces_the_output_and_leaves_no_temporary_file() {
    common::redis_conn().await;
    let sim = sim(20, Duration::from_secs(1)).await;
    let f = Files::new("cli-replace", &["user/4/basic", "user/5/basic"]);
    std::fs::write(&f.output, "stale\n".repeat(10)).unwrap();
    let out = finish(batch(
        &common::unique_prefix("cli-replace"),
        &sim.base_url(),
        20,
        Duration::from_secs(1),
        &f.keys,
        &f.input,
        &f.output,
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = lines(&f.output);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|l| l["ok"] == true), "{got:?}");
    assert_eq!(f.names(), ["input.txt", "keys.txt", "output.jsonl"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_handled_like_ctrl_c_every_line_written() {
    common::redis_conn().await;
    // Two requests per long window: the batch sends two and waits for the rest.
    let window = Duration::from_secs(30);
    let sim = sim(3, window).await;
    let requests: Vec<String> = (0..8).map(|i| format!("user/{}/basic", 100 + i)).collect();
    let requests: Vec<&str> = requests.iter().map(String::as_str).collect();
    let f = Files::new("cli-term", &requests);
    std::fs::write(&f.output, "the previous results\n").unwrap();
    let child = batch(
        &common::unique_prefix("cli-term"),
        &sim.base_url(),
        3,
        window,
        &f.keys,
        &f.input,
        &f.output,
    )
    .spawn()
    .unwrap();
    // The key's lookup and two requests: the owner's window is full.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.counters().ok < 3 {
        assert!(Instant::now() < deadline, "the batch did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "some failed: {}", stderr(&out));
    let got = lines(&f.output);
    assert_eq!(got.len(), 8, "every line written");
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line["index"], i);
    }
    let ok = got.iter().filter(|l| l["ok"] == true).count();
    assert_eq!(ok, 2, "{got:?}");
    for line in got.iter().filter(|l| l["ok"] == false) {
        let message = line["error"]["message"].as_str().unwrap();
        assert!(message.contains("cancelled"), "{line}");
    }
    assert_eq!(f.names(), ["input.txt", "keys.txt", "output.jsonl"]);
}

#[tokio::test]
async fn a_bad_request_line_fails_alone_unsent() {
    common::redis_conn().await;
    let sim = sim(20, Duration::from_secs(1)).await;
    let with_key = format!("user/{KEY}/basic");
    let f = Files::new(
        "cli-lines",
        &[
            "user/4/basic",
            "user/../key/info",
            "user/basic?key=AAAAAAAAAAAAAAAA",
            &with_key,
            "user/ basic",
            "https://evil.example/user",
            "/v2/user/5/basic",
        ],
    );
    let out = finish(batch(
        &common::unique_prefix("cli-lines"),
        &sim.base_url(),
        20,
        Duration::from_secs(1),
        &f.keys,
        &f.input,
        &f.output,
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "some failed: {}", stderr(&out));
    let got = lines(&f.output);
    assert_eq!(got.len(), 7);
    let ok: Vec<bool> = got.iter().map(|l| l["ok"] == true).collect();
    assert_eq!(
        ok,
        [true, false, false, false, false, false, true],
        "{got:?}"
    );
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line["index"], i);
        if line["ok"] == false {
            let message = line["error"]["message"].as_str().unwrap();
            assert!(message.contains("not sent"), "{line}");
            assert!(!message.contains(KEY), "a key echoed: {line}");
        }
    }
    assert_eq!(got[6]["data"]["profile"]["id"], 5);
    // The key's lookup and the two good requests: nothing else reached Torn.
    let c = sim.counters();
    assert_eq!((c.requests, c.admitted), (3, 3), "{c:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(KEY));
    assert!(!stderr(&out).contains(KEY));
}
