//! The gateway's status page as a person sees it: a real headless Chromium loads
//! `/__torn_quota/` from a running `torn-quota serve` (the built binary, on Redis under its own
//! prefix, in front of the simulator), runs the page's script, and the rendered DOM must show
//! the owner's quota as the status JSON gives it, one chart element per minute, the gateway's
//! mode and state, and never a key.
//!
//! Chromium is required: without it this test fails with the command that installs it.

mod common;
#[path = "common/gateway_process.rs"]
mod gateway_process;

use std::process::Command;

use gateway_process::GatewayProcess;
use serde_json::Value;
use torn_quota::AccessLevel;
use torn_quota::TornUserId;
use torn_quota::sim::{SimConfig, SimKey, Simulator};

const KEY: &str = "PageTestKey00004";
const OTHER_KEY: &str = "PageTestKey00077";
const OWNER: u64 = 4;
const OTHER_OWNER: u64 = 77;
const LIMIT: u32 = 100;
const CALLS: usize = 6;
const INSTALL: &str = "apt-get install -y chromium";

/// The `chromium` binary, or a failure that says how to install it (never a skip).
fn chromium() -> &'static str {
    match Command::new("chromium").arg("--version").output() {
        Ok(out) if out.status.success() => "chromium",
        Ok(out) => panic!(
            "`chromium --version` failed ({}): reinstall it with `{INSTALL}`",
            out.status
        ),
        Err(e) => panic!(
            "tests/serve_page.rs renders the status page in a real headless Chromium, and \
             `chromium` is not on PATH ({e}): install it with `{INSTALL}` (as root) and run \
             again"
        ),
    }
}

/// Loads `url` in a fresh headless Chromium profile, lets the page's script run (5 s of
/// virtual time: its first fetch and a couple of refreshes) and returns the rendered DOM.
fn rendered_dom(url: &str) -> String {
    let bin = chromium();
    let profile = std::env::temp_dir().join(common::unique_prefix("chromium-profile"));
    std::fs::create_dir_all(&profile).unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("chromium prints UTF-8")
}

/// The first element opening with `open` (e.g. `<tr data-owner="4"`) up to its `close` tag.
fn element<'a>(dom: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = dom.find(open)?;
    let len = dom[start..].find(close)? + close.len();
    Some(&dom[start..start + len])
}

/// The text of the first `<td class="{class}">…</td>` in `html`.
fn cell<'a>(html: &'a str, class: &str) -> &'a str {
    let open = format!("<td class=\"{class}\">");
    let start = html
        .find(&open)
        .unwrap_or_else(|| panic!("no .{class} cell in {html}"))
        + open.len();
    let len = html[start..].find("</td>").unwrap();
    &html[start..start + len]
}

/// The value of attribute `name` in the opening tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

fn num(text: &str) -> u64 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one browser session, read top to bottom
async fn the_status_page_renders_the_owners_quota_the_chart_and_no_key() {
    chromium(); // fail first, and plainly, when the browser is missing
    let _ = common::redis_conn().await; // and when Redis is
    let sim = Simulator::start(
        [
            SimKey::new(KEY, TornUserId::new(OWNER), AccessLevel::Full),
            SimKey::new(
                OTHER_KEY,
                TornUserId::new(OTHER_OWNER),
                AccessLevel::Limited,
            ),
        ],
        SimConfig::default(),
    )
    .await
    .unwrap();
    let prefix = common::unique_prefix("serve-page");
    let gw = GatewayProcess::start(
        env!("CARGO_BIN_EXE_torn-quota").as_ref(),
        &[
            ("REDIS_URL", common::redis_url()),
            ("TORN_QUOTA_KEY_PREFIX", prefix),
            ("TORN_API_BASE_URL", sim.base_url()),
            ("TORN_QUOTA_MODE", "per-user".to_owned()),
            ("TORN_QUOTA_LIMIT", LIMIT.to_string()),
            ("TORN_QUOTA_WINDOW_MS", "60000".to_owned()),
        ],
    )
    .await;

    // Calls as apps make them: the header for one owner, a legacy `?key=` for the other.
    let http = reqwest::Client::new();
    for i in 0..CALLS {
        let body: Value = http
            .get(format!("{}/v2/user/basic?timestamp={i}", gw.base_url()))
            .header("Authorization", format!("ApiKey {KEY}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(body.get("error").is_none(), "call {i} failed: {body}");
    }
    let legacy: Value = http
        .get(format!(
            "{}/user/?selections=basic&key={OTHER_KEY}",
            gw.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(legacy["player_id"], OTHER_OWNER, "legacy call: {legacy}");

    // The figures the page must show: the gateway's own status, read after the calls (no
    // call runs after this, so the 60 s window holds them still).
    let status: Value = http
        .get(format!("{}/__torn_quota/status", gw.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let owners = status["owners"].as_array().expect("owners array");
    let mine = owners
        .iter()
        .find(|o| o["owner"] == OWNER)
        .unwrap_or_else(|| panic!("status lacks owner {OWNER}: {status}"));
    let used = mine["used"].as_u64().unwrap();
    assert!(
        used >= CALLS as u64,
        "{CALLS} calls reached Torn, the limiter counts {used}: {status}"
    );
    assert_eq!(mine["limit"], LIMIT);
    let rpm = status["rpm"].as_array().expect("rpm array");

    let dom = rendered_dom(&format!("{}/__torn_quota/", gw.base_url()));

    // The page's script ran and read the status.
    let feed = element(&dom, "<dd id=\"fetch-state\"", "</dd>").expect("#fetch-state");
    assert_eq!(attr(feed, "data-state"), Some("ok"), "status feed: {feed}");
    let updated = element(&dom, "<time id=\"updated\"", "</time>").expect("#updated");
    assert!(
        attr(updated, "datetime").is_some(),
        "never updated: {updated}"
    );
    let mode = element(&dom, "<dd id=\"mode\"", "</dd>").unwrap();
    assert!(mode.contains(">per-user<"), "mode: {mode}");
    let degraded = element(&dom, "<dd id=\"degraded\"", "</dd>").unwrap();
    assert_eq!(attr(degraded, "data-degraded"), Some("false"), "{degraded}");
    assert!(
        degraded.contains("healthy"),
        "the state is said in words: {degraded}"
    );

    // The owner's row, with the limiter's numbers.
    let row = element(&dom, &format!("<tr data-owner=\"{OWNER}\""), "</tr>")
        .unwrap_or_else(|| panic!("no row for owner {OWNER} in the page:\n{dom}"));
    assert_eq!(num(cell(row, "used")), used, "{row}");
    assert_eq!(num(cell(row, "limit")), u64::from(LIMIT), "{row}");
    assert_eq!(
        num(cell(row, "remaining")),
        mine["remaining"].as_u64().unwrap()
    );
    assert_eq!(num(cell(row, "calls")), mine["calls"].as_u64().unwrap());
    assert_eq!(num(cell(row, "code5")), 0);
    assert!(
        row.contains(&format!(
            "aria-label=\"owner {OWNER}: {used} of {LIMIT} used\""
        )),
        "the bar is labelled for a screen reader: {row}"
    );
    let other = element(&dom, &format!("<tr data-owner=\"{OTHER_OWNER}\""), "</tr>")
        .unwrap_or_else(|| panic!("no row for the ?key= caller's owner {OTHER_OWNER}"));
    assert!(num(cell(other, "used")) >= 1, "{other}");

    // The chart: one element per minute the status reports, counting every call above.
    let chart = element(&dom, "<svg id=\"rpm\"", "</svg>").expect("svg#rpm");
    let minutes: Vec<&str> = chart
        .split("<rect ")
        .skip(1)
        .filter(|r| r.contains("class=\"minute\""))
        .collect();
    assert!(
        !minutes.is_empty() && minutes.len() <= 15,
        "{} minute elements: {chart}",
        minutes.len()
    );
    // A minute may have begun between the status read and the page's: one more, no fewer.
    assert!(
        minutes.len() == rpm.len() || minutes.len() == rpm.len() + 1,
        "{} minute elements for {} minutes in the status",
        minutes.len(),
        rpm.len()
    );
    let charted: u64 = minutes
        .iter()
        .map(|r| num(attr(r, "data-count").expect("data-count")))
        .sum();
    assert!(
        charted > CALLS as u64,
        "the chart counts {charted} requests, {} were made: {chart}",
        CALLS + 1
    );

    // The IP bucket is shown with numbers.
    let ip = element(&dom, "<table id=\"ip\"", "</table>").unwrap();
    assert!(num(cell(ip, "used")) >= CALLS as u64, "{ip}");

    // No key, whole or in part that could identify it, anywhere in what the page shows.
    for key in [KEY, OTHER_KEY] {
        assert!(!dom.contains(key), "the page shows a key");
    }
    assert!(!gw.stderr().contains(KEY) && !gw.stderr().contains(OTHER_KEY));
    drop(gw);
    sim.shutdown().await;
}

/// The page is one self-contained file: nothing it loads comes from anywhere but the gateway.
#[test]
fn the_page_fetches_nothing_from_outside() {
    let page = include_str!("../src/serve/page/index.html");
    for outside in ["http://", "https://", "//cdn", "@import", "<link", "src=\""] {
        let hits: Vec<&str> = page
            .lines()
            .filter(|l| l.contains(outside) && !l.contains("www.w3.org/2000/svg"))
            .collect();
        assert!(hits.is_empty(), "{outside:?} in the page: {hits:?}");
    }
    assert!(page.contains("fetch(STATUS"));
    assert!(page.contains("const STATUS = \"/__torn_quota/status\""));
}
