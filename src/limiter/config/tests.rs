//! The limiter's configuration: defaults, bounds, and every bad value named by its setting.

use super::*;
#[cfg(feature = "settings")]
use crate::settings::test_env::env;

/// The configuration the one [`Settings`](crate::settings::Settings) reader makes of
/// `file` and `env`, as the binary reads it.
#[cfg(feature = "settings")]
fn from_sources(
    file: Option<&std::path::Path>,
    env: impl Fn(&str) -> Option<String>,
) -> crate::error::Result<RateLimitConfig> {
    crate::settings::Settings::from_sources(file, env)?.rate_limit()
}

fn setting_of(err: Error) -> &'static str {
    match err {
        Error::Config { setting, .. } => setting,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
#[cfg(feature = "settings")]
fn defaults_are_torns_limit() {
    let c = from_sources(None, env(&[])).unwrap();
    assert_eq!(c.limit().get(), 100);
    assert_eq!(c.window_ms(), 60_000);
    assert_eq!(c.mode(), Mode::PerUser);
    assert_eq!(c.on_redis_down(), OnRedisDown::FailFast);
}

#[test]
#[cfg(feature = "settings")]
fn bad_values_name_their_setting() {
    for (pairs, setting) in [
        (vec![("TORN_QUOTA_LIMIT", "0")], "TORN_QUOTA_LIMIT"),
        (vec![("TORN_QUOTA_LIMIT", "ten")], "TORN_QUOTA_LIMIT"),
        (vec![("TORN_QUOTA_WINDOW_MS", "0")], "TORN_QUOTA_WINDOW_MS"),
        (vec![("REDIS_URL", "not a url")], "REDIS_URL"),
        (vec![("REDIS_URL", "http://localhost:6379")], "REDIS_URL"),
        (vec![("TORN_QUOTA_MODE", "fast")], "TORN_QUOTA_MODE"),
        (
            vec![("TORN_QUOTA_USER_LIMITS", "12=0")],
            "TORN_QUOTA_USER_LIMITS",
        ),
        (
            vec![("TORN_QUOTA_USER_LIMITS", "12")],
            "TORN_QUOTA_USER_LIMITS",
        ),
        (
            vec![("TORN_QUOTA_ON_REDIS_DOWN", "local")],
            "TORN_QUOTA_WORKERS",
        ),
        (
            vec![("TORN_QUOTA_ON_REDIS_DOWN", "pray")],
            "TORN_QUOTA_ON_REDIS_DOWN",
        ),
        (vec![("TORN_QUOTA_RESERVE", "100")], "TORN_QUOTA_RESERVE"),
        (
            vec![("TORN_QUOTA_KEY_PREFIX", "a{b")],
            "TORN_QUOTA_KEY_PREFIX",
        ),
        (
            vec![("TORN_QUOTA_LOG_DECISIONS", "maybe")],
            "TORN_QUOTA_LOG_DECISIONS",
        ),
        (
            vec![("TORN_QUOTA_ROLLOUT_PERCENT", "101")],
            "TORN_QUOTA_ROLLOUT_PERCENT",
        ),
        (
            vec![("TORN_QUOTA_ROLLOUT_PERCENT", "-1")],
            "TORN_QUOTA_ROLLOUT_PERCENT",
        ),
        (
            vec![("TORN_QUOTA_ROLLOUT_PERCENT", "12.5")],
            "TORN_QUOTA_ROLLOUT_PERCENT",
        ),
        (
            vec![("TORN_QUOTA_LEGACY_LIMIT", "0")],
            "TORN_QUOTA_LEGACY_LIMIT",
        ),
        (
            vec![("TORN_QUOTA_LEGACY_WINDOW_MS", "0")],
            "TORN_QUOTA_LEGACY_WINDOW_MS",
        ),
    ] {
        let err = from_sources(None, env(&pairs)).unwrap_err();
        let message = err.to_string();
        assert_eq!(setting_of(err), setting, "for {pairs:?}");
        assert!(message.contains(setting), "{message}");
    }
}

#[test]
#[cfg(feature = "settings")]
fn rollout_percent_and_legacy_settings_parse() {
    let c = from_sources(None, env(&[])).unwrap();
    assert_eq!(c.rollout_percent(), None);
    assert_eq!(c.legacy_limit().get(), 50);
    assert_eq!(c.legacy_window(), Duration::from_secs(60));
    for (raw, want) in [("0", 0), ("10", 10), (" 50% ", 50), ("100", 100)] {
        let c = from_sources(
            None,
            env(&[
                ("TORN_QUOTA_ROLLOUT_PERCENT", raw),
                ("TORN_QUOTA_LEGACY_LIMIT", "7"),
                ("TORN_QUOTA_LEGACY_WINDOW_MS", "1500"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rollout_percent(), Some(want), "{raw}");
        assert_eq!(c.legacy_limit().get(), 7);
        assert_eq!(c.legacy_window(), Duration::from_millis(1500));
    }
    let err = RateLimitConfig::builder()
        .rollout_percent(101)
        .build()
        .unwrap_err();
    assert_eq!(setting_of(err), "TORN_QUOTA_ROLLOUT_PERCENT");
}

#[test]
fn the_redis_password_never_shows() {
    let c = RateLimitConfig::builder()
        .redis_url("redis://worker:s3cret-pass@cache.internal:6380/2")
        .build()
        .unwrap();
    assert_eq!(
        c.redis_url(),
        "redis://worker:s3cret-pass@cache.internal:6380/2"
    );
    assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
    assert_eq!(
        c.redis_url_redacted(),
        "redis://worker:***@cache.internal:6380/2"
    );
}

/// Issue 12 item 6: `redis+unix://` URLs carry the password as a query parameter.
#[test]
fn a_unix_socket_password_never_shows() {
    for url in [
        "redis+unix:///run/redis.sock?db=2&pass=s3cret-pass",
        "redis+unix:///run/redis.sock?password=s3cret-pass&db=2",
        "unix:///run/redis.sock?PASS=s3cret-pass",
        "redis://:s3cret-pass@cache.internal:6379/?password=s3cret-pass",
    ] {
        let c = RateLimitConfig::builder().redis_url(url).build().unwrap();
        let shown = c.redis_url_redacted();
        assert!(!shown.contains("s3cret"), "{url} shows as {shown}");
        assert!(shown.contains("***"), "{shown}");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.redis_target_redacted().contains("s3cret"));
    }
    let c = RateLimitConfig::builder()
        .redis_url("redis+unix:///run/redis.sock?db=2&pass=s3cret")
        .build()
        .unwrap();
    assert_eq!(
        c.redis_url_redacted(),
        "redis+unix:///run/redis.sock?db=2&pass=***"
    );
}

/// Issue 12 items 2 and 5: limits, windows, timeouts, connections and workers bounded,
/// each refusal naming its setting.
#[test]
#[cfg(feature = "settings")]
fn bounds_name_their_setting() {
    let huge = u64::MAX.to_string();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("TORN_QUOTA_LIMIT", "10001")], "TORN_QUOTA_LIMIT"),
        (vec![("TORN_QUOTA_LIMIT", "4294967295")], "TORN_QUOTA_LIMIT"),
        (
            vec![("TORN_QUOTA_USER_LIMITS", "7=40,8=30000000")],
            "TORN_QUOTA_USER_LIMITS",
        ),
        (
            vec![("TORN_QUOTA_WINDOW_MS", "86400001")],
            "TORN_QUOTA_WINDOW_MS",
        ),
        (
            vec![("TORN_QUOTA_WINDOW_MS", &huge)],
            "TORN_QUOTA_WINDOW_MS",
        ),
        (
            vec![("TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS", &huge)],
            "TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS",
        ),
        (
            vec![("TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS", &huge)],
            "TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS",
        ),
        (
            vec![("TORN_QUOTA_RECONNECT_INTERVAL_MS", &huge)],
            "TORN_QUOTA_RECONNECT_INTERVAL_MS",
        ),
        (
            vec![("TORN_QUOTA_LEGACY_WINDOW_MS", &huge)],
            "TORN_QUOTA_LEGACY_WINDOW_MS",
        ),
        (
            vec![("TORN_QUOTA_REDIS_CONNECTIONS", "65")],
            "TORN_QUOTA_REDIS_CONNECTIONS",
        ),
        (
            vec![
                ("TORN_QUOTA_ON_REDIS_DOWN", "local"),
                ("TORN_QUOTA_WORKERS", "101"),
            ],
            "TORN_QUOTA_WORKERS",
        ),
        (
            vec![
                ("TORN_QUOTA_USER_LIMITS", "7=3"),
                ("TORN_QUOTA_ON_REDIS_DOWN", "local"),
                ("TORN_QUOTA_WORKERS", "4"),
            ],
            "TORN_QUOTA_WORKERS",
        ),
    ];
    for (pairs, setting) in cases {
        let err = from_sources(None, env(&pairs)).unwrap_err();
        assert_eq!(setting_of(err), setting, "{pairs:?}");
    }
    // The bounds themselves are fine.
    let c = from_sources(
        None,
        env(&[
            ("TORN_QUOTA_LIMIT", "10000"),
            ("TORN_QUOTA_WINDOW_MS", "86400000"),
            ("TORN_QUOTA_USER_LIMITS", "7=3"),
            ("TORN_QUOTA_REDIS_CONNECTIONS", "64"),
            ("TORN_QUOTA_ON_REDIS_DOWN", "local"),
            ("TORN_QUOTA_WORKERS", "3"),
        ]),
    )
    .unwrap();
    assert_eq!((c.limit().get(), c.window_ms()), (10_000, 86_400_000));
}

/// Issue 12 item 10: an id given twice in TORN_QUOTA_USER_LIMITS is refused, by name.
#[test]
#[cfg(feature = "settings")]
fn a_user_given_twice_is_refused() {
    let err =
        from_sources(None, env(&[("TORN_QUOTA_USER_LIMITS", "7=40, 8=5, 7=50")])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("user 7 is given twice"), "{msg}");
    assert_eq!(setting_of(err), "TORN_QUOTA_USER_LIMITS");
}

#[test]
#[cfg(feature = "settings")]
fn cluster_urls_parse_validate_and_stay_redacted() {
    let c = from_sources(None, env(&[])).unwrap();
    assert!(!c.is_redis_cluster());
    assert!(c.redis_cluster_urls().is_empty());
    let c = from_sources(
        None,
        env(&[(
            "REDIS_CLUSTER_URLS",
            " redis://:s3cret-pass@10.0.0.1:7000 , redis://10.0.0.2:7001,",
        )]),
    )
    .unwrap();
    assert!(c.is_redis_cluster());
    assert_eq!(
        c.redis_cluster_urls(),
        [
            "redis://:s3cret-pass@10.0.0.1:7000",
            "redis://10.0.0.2:7001"
        ]
    );
    assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
    let target = c.redis_target_redacted();
    assert!(
        !target.contains("s3cret") && target.contains("10.0.0.2:7001"),
        "{target}"
    );
    for bad in [
        "",
        " , ",
        "not a url",
        "http://10.0.0.1:7000",
        "unix:///tmp/redis.sock",
        "redis://10.0.0.1:7000,redis://:s3cret@[bad",
    ] {
        let err = from_sources(None, env(&[("REDIS_CLUSTER_URLS", bad)])).unwrap_err();
        let message = err.to_string();
        assert!(!message.contains("s3cret"), "{message}");
        assert_eq!(setting_of(err), "REDIS_CLUSTER_URLS", "for {bad:?}");
    }
}

#[test]
#[cfg(feature = "settings")]
fn cluster_urls_read_from_a_toml_list() {
    let dir = std::env::temp_dir().join(format!("tq-config-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("quota.toml");
    std::fs::write(
        &path,
        "REDIS_CLUSTER_URLS = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\n",
    )
    .unwrap();
    let c = from_sources(Some(&path), env(&[])).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        c.redis_cluster_urls(),
        ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
    );
}

/// TLS files go with a cluster whose every seed is `rediss://` (the client takes one TLS
/// mode for all nodes); a `redis://` seed would leave them unused, so it is refused.
#[test]
fn tls_files_with_a_cluster_need_every_seed_over_tls() {
    let with = |urls: &[&str]| {
        RateLimitConfig::builder()
            .redis_cluster_urls(urls.iter().copied())
            .redis_ca_file("/etc/tq/ca.pem")
            .redis_client_cert("/etc/tq/client.crt", "/etc/tq/client.key")
            .build()
    };
    let c = with(&["rediss://10.0.0.1:7000", "rediss://10.0.0.2:7000"]).unwrap();
    assert!(c.is_redis_cluster());
    assert_eq!(
        c.redis_ca_file(),
        Some(std::path::Path::new("/etc/tq/ca.pem"))
    );
    for urls in [
        &["redis://10.0.0.1:7000"][..],
        &["rediss://10.0.0.1:7000", "redis://10.0.0.2:7000"][..],
    ] {
        let err = with(urls).unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        assert_eq!(setting_of(err), "TORN_QUOTA_REDIS_CA_FILE", "for {urls:?}");
    }
    // A plain REDIS_URL does not matter once the cluster is used.
    let c = RateLimitConfig::builder()
        .redis_url("redis://127.0.0.1:6379")
        .redis_cluster_urls(["rediss://10.0.0.1:7000"])
        .redis_ca_file("/etc/tq/ca.pem")
        .build();
    assert!(c.is_ok(), "{c:?}");
}

#[test]
fn builder_rejects_a_zero_window() {
    let err = RateLimitConfig::builder()
        .window(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(setting_of(err), "TORN_QUOTA_WINDOW_MS");
}

#[test]
#[cfg(feature = "settings")]
fn env_wins_over_the_file_and_overrides_parse() {
    let dir = std::env::temp_dir().join(format!("tq-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("quota.toml");
    std::fs::write(
        &path,
        "TORN_QUOTA_LIMIT = 80\nTORN_QUOTA_WINDOW_MS = 1000\n\
         [TORN_QUOTA_USER_LIMITS]\n7 = 40\n",
    )
    .unwrap();
    let c = from_sources(Some(&path), env(&[("TORN_QUOTA_LIMIT", "90")])).unwrap();
    assert_eq!(c.limit().get(), 90);
    assert_eq!(c.window_ms(), 1000);
    assert_eq!(c.limit_for(TornUserId::new(7)).get(), 40);
    assert_eq!(c.limit_for(TornUserId::new(8)).get(), 90);

    std::fs::write(&path, "TORN_QUOTA_LIMT = 80\n").unwrap();
    let err = from_sources(Some(&path), env(&[])).unwrap_err();
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("TORN_QUOTA_LIMT"),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
