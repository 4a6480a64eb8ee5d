//! The one `Settings` reader: the README's tables list exactly its settings and their
//! defaults; the file refuses unknown names; the environment wins; a bad value names its
//! setting; no secret ever shows in an error.
#![cfg(feature = "settings")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use torn_quota::Error;
use torn_quota::settings::Settings;

/// A TOML file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "tq-settings-test-{}-{}.toml",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&p, text).unwrap();
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// An error and its causes on one line, as the binary prints them.
fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn setting_of(err: &Error) -> &'static str {
    match err {
        Error::Config { setting, .. } => setting,
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// The README's settings tables (those headed `| setting | default | meaning |`): each
/// name with the default its row states (`None` for an empty cell or `unset`).
fn readme_settings() -> BTreeMap<String, Option<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut out = BTreeMap::new();
    let mut in_table = false;
    for line in readme.lines() {
        if line.starts_with("| setting | default |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, defaults) = (cells[1], cells[2]);
        let names: Vec<&str> = names.split(", ").map(|n| n.trim_matches('`')).collect();
        let defaults: Vec<Option<String>> = if defaults.is_empty() || defaults == "unset" {
            vec![None; names.len()]
        } else {
            defaults
                .split(", ")
                .map(|d| Some(d.trim_matches('`').to_owned()))
                .collect()
        };
        assert_eq!(
            names.len(),
            defaults.len(),
            "README row {line:?}: one default per name"
        );
        for (name, default) in names.into_iter().zip(defaults) {
            assert!(
                out.insert(name.to_owned(), default).is_none(),
                "README lists {name} twice"
            );
        }
    }
    out
}

/// Every configuration the settings make, printed: what a documented default must leave
/// unchanged. The database needs a URL, the same one on both sides. (The gateway's and the
/// not-yet-used settings have no configuration yet, and the README states no default for
/// them.)
fn everything(settings: &[(&str, &str)]) -> String {
    let mut pairs = vec![("DATABASE_URL", "postgres://localhost/db")];
    pairs.extend_from_slice(settings);
    let s = Settings::from_sources(None, env(&pairs)).unwrap();
    format!(
        "{:?}\n{:?}\n{:?}",
        s.rate_limit().unwrap(),
        s.torn_client().unwrap(),
        s.database().unwrap(),
    )
}

#[test]
fn the_readme_lists_exactly_the_settings_with_their_defaults() {
    let readme = readme_settings();
    let documented: Vec<&str> = readme.keys().map(String::as_str).collect();
    let mut known: Vec<&str> = Settings::names().to_vec();
    known.sort_unstable();
    assert_eq!(documented, known, "README tables against Settings");

    let defaults = everything(&[]);
    for (name, default) in &readme {
        // A placeholder (`torn-quota/<version>`) is no value to check.
        let Some(default) = default.as_deref().filter(|d| !d.contains('<')) else {
            continue;
        };
        assert_eq!(
            everything(&[(name, default)]),
            defaults,
            "README's default {default} for {name} is not the default"
        );
    }
}

#[test]
fn a_default_that_is_not_one_is_caught() {
    // The check above must be able to fail: a value other than the default changes what
    // the settings make.
    assert_ne!(everything(&[("TORN_QUOTA_LIMIT", "99")]), everything(&[]));
    assert_ne!(
        everything(&[("TORN_QUOTA_DATABASE_STATEMENT_TIMEOUT_MS", "29999")]),
        everything(&[])
    );
}

#[test]
fn an_unknown_key_in_the_file_is_refused_by_name() {
    let f = TempFile::new("TORN_QUOTA_LIMIT = 7\nTORN_QUOTA_WINDOW_SM = 1000\n");
    let err = Settings::from_sources(Some(f.path()), env(&[])).unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("unknown setting 'TORN_QUOTA_WINDOW_SM'"),
        "{text}"
    );
    assert!(
        text.contains("TORN_QUOTA_WINDOW_MS"),
        "the known names: {text}"
    );
    // The environment is not the file: unrelated variables are simply not read.
    Settings::from_sources(None, env(&[("TORN_QUOTA_WINDOW_SM", "1"), ("HOME", "/")])).unwrap();
}

#[test]
fn the_environment_overrides_the_file() {
    let f = TempFile::new(
        "TORN_QUOTA_LIMIT = 80\nTORN_QUOTA_WINDOW_MS = 1000\nTORN_API_MAX_ATTEMPTS = 2\n\
         [TORN_QUOTA_USER_LIMITS]\n7 = 40\n",
    );
    let s = Settings::from_sources(
        Some(f.path()),
        env(&[("TORN_QUOTA_LIMIT", "90"), ("TORN_API_MAX_ATTEMPTS", " 4 ")]),
    )
    .unwrap();
    let limits = s.rate_limit().unwrap();
    assert_eq!(limits.limit().get(), 90);
    assert_eq!(limits.window_ms(), 1000);
    assert_eq!(limits.limit_for(torn_quota::TornUserId::new(7)).get(), 40);
    assert_eq!(s.torn_client().unwrap().max_attempts().get(), 4);
    // A table in the file and a string in the environment spell the same limits.
    let s = Settings::from_sources(
        Some(f.path()),
        env(&[("TORN_QUOTA_USER_LIMITS", "7=5,8=6")]),
    )
    .unwrap();
    let limits = s.rate_limit().unwrap();
    assert_eq!(limits.limit_for(torn_quota::TornUserId::new(7)).get(), 5);
    assert_eq!(limits.limit_for(torn_quota::TornUserId::new(8)).get(), 6);
}

#[test]
fn a_bad_value_names_its_setting_from_either_source() {
    for (name, value) in [
        ("TORN_QUOTA_LIMIT", "ten"),
        ("TORN_QUOTA_WINDOW_MS", "0"),
        ("TORN_QUOTA_MODE", "fast"),
        ("TORN_QUOTA_ROLLOUT_PERCENT", "101"),
        ("TORN_QUOTA_LOG_DECISIONS", "maybe"),
        ("TORN_QUOTA_USER_LIMITS", "12"),
        ("TORN_QUOTA_ON_REDIS_DOWN", "pray"),
        ("TORN_API_MAX_ATTEMPTS", "-1"),
        ("TORN_QUOTA_SAFETY_MARGIN_MS", "soon"),
        ("TORN_QUOTA_LISTEN", "nowhere"),
        ("TORN_QUOTA_SERVE_MAX_WAIT_MS", "0"),
        ("TORN_QUOTA_DATABASE_MAX_CONNECTIONS", "0"),
    ] {
        let err = Settings::from_sources(None, env(&[(name, value)])).unwrap_err();
        assert_eq!(setting_of(&err), name, "{name}={value}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid setting {name}: ")),
            "{err}"
        );
        let f = TempFile::new(&format!("{name} = \"{value}\"\n"));
        let err = Settings::from_sources(Some(f.path()), env(&[])).unwrap_err();
        assert_eq!(setting_of(&err), name, "file: {name}={value}");
    }
    // A value of the wrong kind in the file names its setting too.
    let f = TempFile::new("TORN_QUOTA_LIMIT = [1, 2]\n");
    let err = Settings::from_sources(Some(f.path()), env(&[])).unwrap_err();
    assert_eq!(setting_of(&err), "TORN_QUOTA_LIMIT", "{err}");
    // Values valid alone but not together are refused when the configuration is built.
    let s = Settings::from_sources(None, env(&[("TORN_QUOTA_ON_REDIS_DOWN", "local")])).unwrap();
    assert_eq!(
        setting_of(&s.rate_limit().unwrap_err()),
        "TORN_QUOTA_WORKERS"
    );
}

#[test]
fn no_secret_shows_in_an_error() {
    const SECRET: &str = "s3cretValue";
    let b64 = format!("{SECRET}==");
    let url = format!("mysql://u:{SECRET}@h/db");
    let cluster = format!("redis://:{SECRET}@[bad");
    for (name, value) in [
        ("DATABASE_URL", url.as_str()),
        ("TORN_QUOTA_ENCRYPTION_KEY", b64.as_str()),
        ("REDIS_CLUSTER_URLS", cluster.as_str()),
    ] {
        let s = Settings::from_sources(None, env(&[(name, value)])).unwrap();
        let errs = [s.rate_limit().err(), s.database().err(), s.keyring().err()];
        let mut named = false;
        for err in errs.into_iter().flatten() {
            let text = chain(&err);
            assert!(!text.contains(SECRET), "{name}: {text}");
            named |= matches!(err, Error::Config { setting, .. } if setting == name);
        }
        assert!(named, "{name} is refused by name");
        assert!(!format!("{s:?}").contains(SECRET), "{s:?}");
    }
    // Secrets of the wrong kind in the file: the deserialiser's own text would quote them.
    for text in [
        format!("DATABASE_URL = {{ password = \"{SECRET}\" }}\n"),
        format!("TORN_QUOTA_SERVE_TOKEN = [\"{SECRET}\"]\n"),
        format!("REDIS_SENTINEL_PASSWORD = {{ x = \"{SECRET}\" }}\n"),
        format!("TORN_QUOTA_ENCRYPTION_KEY = \"{SECRET}\nTORN_QUOTA_LIMIT = 1\n"),
    ] {
        let f = TempFile::new(&text);
        let err = Settings::from_sources(Some(f.path()), env(&[])).unwrap_err();
        let shown = chain(&err);
        assert!(!shown.contains(SECRET), "{text:?}: {shown}");
    }
}

/// The binary reads the same settings and says which one is wrong, exit 2.
#[cfg(feature = "cli")]
#[test]
fn the_binary_names_the_bad_setting() {
    let f = TempFile::new("TORN_QUOTA_LIMIT = 5\nTORN_QUOTA_LIMTI = 6\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_torn-quota"))
        .args(["status", "--user", "1", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown setting 'TORN_QUOTA_LIMTI'"),
        "{stderr}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_torn-quota"))
        .args(["status", "--user", "1"])
        .env("TORN_QUOTA_LIMIT", "ten")
        .env_remove("TORN_QUOTA_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid setting TORN_QUOTA_LIMIT: expected a positive integer, got 'ten'"),
        "{stderr}"
    );
}
