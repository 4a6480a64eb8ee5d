//! `rediss://` against a TLS-only `redis-server` of the test's own: a trusted CA grants, an
//! unknown CA fails within the timeout with an error naming TLS and the certificate, and
//! mutual TLS works with the right client certificate and is refused, clearly, without it.
//! The same against a TLS-only Redis Cluster of three, reached through one seed node: the
//! certificates must hold for the nodes the client discovers from `CLUSTER SLOTS` too.

mod common;

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use common::tls_redis::{Certs, TlsCluster, TlsRedis, query};
use torn_quota::{Error, Limiter, RateLimitConfig, RateLimitConfigBuilder, TornUserId};

const USER: TornUserId = TornUserId::new(7);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// connect + command timeout, plus generous slack for a loaded machine.
const BOUND: Duration = Duration::from_millis(3_000);

fn builder(url: &str) -> RateLimitConfigBuilder {
    RateLimitConfig::builder()
        .redis_url(url)
        .key_prefix(common::unique_prefix("tls"))
        .limit(NonZeroU32::new(3).unwrap())
        .window(Duration::from_secs(30))
        .connect_timeout(CONNECT_TIMEOUT)
        .command_timeout(Duration::from_millis(1_000))
        .connections(NonZeroUsize::MIN)
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

/// The call fails, within the bound, as Redis unavailable, and says TLS and certificate.
async fn assert_tls_refused(limiter: &Limiter) {
    assert_tls_refused_within(limiter, BOUND).await;
}

/// The same, within `bound`.
async fn assert_tls_refused_within(limiter: &Limiter, bound: Duration) {
    let started = Instant::now();
    let err = limiter.try_acquire(USER, 1).await.unwrap_err();
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    assert!(err.is_unavailable(), "{err:?}");
    let text = chain(&err).to_ascii_lowercase();
    assert!(
        text.contains("tls") && text.contains("certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn trusted_ca_grants_and_denies_by_the_limit() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, false);
    let config = builder(&redis.url())
        .redis_ca_file(certs.path("ca.crt"))
        .build()
        .unwrap();
    let limiter = Limiter::redis(config).unwrap();
    for i in 0..3 {
        let d = limiter.try_acquire(USER, 1).await.unwrap();
        assert!(d.is_granted() && !d.is_degraded(), "call {i}: {d:?}");
    }
    // The fourth is denied by Redis's count, not by a failure: the state is over TLS.
    assert!(!limiter.try_acquire(USER, 1).await.unwrap().is_granted());
}

#[tokio::test]
async fn unknown_ca_is_a_tls_error_within_the_timeout() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, false);
    // The public web roots (no CA file) do not know the test's CA either.
    for config in [
        builder(&redis.url())
            .redis_ca_file(certs.path("rogue-ca.crt"))
            .build()
            .unwrap(),
        builder(&redis.url()).build().unwrap(),
    ] {
        let limiter = Limiter::redis(config).unwrap();
        assert_tls_refused(&limiter).await;
    }
}

#[tokio::test]
async fn mutual_tls_accepts_the_right_client_certificate_only() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, true);
    let ok = builder(&redis.url())
        .redis_ca_file(certs.path("ca.crt"))
        .redis_client_cert(certs.path("client.crt"), certs.path("client.key"))
        .build()
        .unwrap();
    let limiter = Limiter::redis(ok).unwrap();
    assert!(limiter.try_acquire(USER, 1).await.unwrap().is_granted());

    let missing = builder(&redis.url())
        .redis_ca_file(certs.path("ca.crt"))
        .build()
        .unwrap();
    assert_tls_refused(&Limiter::redis(missing).unwrap()).await;

    let wrong = builder(&redis.url())
        .redis_ca_file(certs.path("ca.crt"))
        .redis_client_cert(
            certs.path("rogue-client.crt"),
            certs.path("rogue-client.key"),
        )
        .build()
        .unwrap();
    assert_tls_refused(&Limiter::redis(wrong).unwrap()).await;
}

/// A limiter on the cluster given its first node alone as seed; nothing listens at
/// `REDIS_URL`, so a call that went to the single Redis would fail.
fn cluster_builder(cluster: &TlsCluster) -> RateLimitConfigBuilder {
    builder("redis://127.0.0.1:1").redis_cluster_urls([cluster.seed_url()])
}

/// Users 1 to 30, whose buckets (hash tag `{u<id>}`) fall on every node: at least 3 on each.
fn users_on_every_node(cluster: &mut TlsCluster) -> Vec<TornUserId> {
    let mut on_node = vec![0; cluster.node_count()];
    let users: Vec<TornUserId> = (1..=30)
        .map(|id| {
            on_node[cluster.node_of(&format!("{{u{id}}}"))] += 1;
            TornUserId::new(id)
        })
        .collect();
    assert!(
        on_node.iter().all(|n| *n >= 3),
        "users per node: {on_node:?}"
    );
    users
}

/// Every user gets exactly the limit of 3 from Redis, then is denied by the count; every
/// node then holds state, so the seed and both discovered nodes were reached over TLS.
async fn every_user_is_limited_on_every_node(limiter: &Limiter, cluster: &mut TlsCluster) {
    assert!(limiter.config().is_redis_cluster());
    for user in users_on_every_node(cluster) {
        for i in 0..3 {
            let d = limiter.try_acquire(user, 1).await.unwrap();
            assert!(
                d.is_granted() && !d.is_degraded(),
                "{user:?} call {i}: {d:?}"
            );
        }
        let d = limiter.try_acquire(user, 1).await.unwrap();
        assert!(
            !d.is_granted() && !d.is_degraded(),
            "{user:?} call 4: {d:?}"
        );
    }
    for i in 0..cluster.node_count() {
        let keys: u64 = query(cluster.conn(i), &["DBSIZE"]);
        assert!(keys > 0, "node {i} holds no key");
    }
}

#[tokio::test]
async fn cluster_with_a_private_ca_limits_users_on_every_node() {
    let certs = Certs::make();
    let mut cluster = TlsCluster::start(&certs, false);
    let config = cluster_builder(&cluster)
        .redis_ca_file(certs.path("ca.crt"))
        .build()
        .unwrap();
    let limiter = Limiter::redis(config).unwrap();
    every_user_is_limited_on_every_node(&limiter, &mut cluster).await;
}

/// A refused certificate is a handshake failure, not a wait: it must surface before the
/// connect timeout (a timeout error would not name TLS anyway).
#[tokio::test]
async fn cluster_with_an_unknown_ca_is_a_tls_error_within_the_timeout() {
    let certs = Certs::make();
    let cluster = TlsCluster::start(&certs, false);
    for config in [
        cluster_builder(&cluster)
            .redis_ca_file(certs.path("rogue-ca.crt"))
            .build()
            .unwrap(),
        cluster_builder(&cluster).build().unwrap(),
    ] {
        let limiter = Limiter::redis(config).unwrap();
        assert_tls_refused_within(&limiter, CONNECT_TIMEOUT).await;
    }
}

#[tokio::test]
async fn cluster_with_mutual_tls_accepts_the_right_client_certificate_only() {
    let certs = Certs::make();
    let mut cluster = TlsCluster::start(&certs, true);
    let ok = cluster_builder(&cluster)
        .redis_ca_file(certs.path("ca.crt"))
        .redis_client_cert(certs.path("client.crt"), certs.path("client.key"))
        .build()
        .unwrap();
    every_user_is_limited_on_every_node(&Limiter::redis(ok).unwrap(), &mut cluster).await;

    let missing = cluster_builder(&cluster)
        .redis_ca_file(certs.path("ca.crt"))
        .build()
        .unwrap();
    assert_tls_refused_within(&Limiter::redis(missing).unwrap(), CONNECT_TIMEOUT).await;

    let wrong = cluster_builder(&cluster)
        .redis_ca_file(certs.path("ca.crt"))
        .redis_client_cert(
            certs.path("rogue-client.crt"),
            certs.path("rogue-client.key"),
        )
        .build()
        .unwrap();
    assert_tls_refused_within(&Limiter::redis(wrong).unwrap(), CONNECT_TIMEOUT).await;
}

#[test]
fn tls_settings_are_checked_at_build() {
    let only_cert = builder("rediss://127.0.0.1:6380")
        .redis_client_cert_file("/nonexistent/client.crt")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            only_cert,
            Error::Config {
                setting: "TORN_QUOTA_REDIS_CLIENT_KEY_FILE",
                ..
            }
        ),
        "{only_cert:?}"
    );
    let plain = builder("redis://127.0.0.1:6379")
        .redis_ca_file("/nonexistent/ca.crt")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            plain,
            Error::Config {
                setting: "TORN_QUOTA_REDIS_CA_FILE",
                ..
            }
        ),
        "{plain:?}"
    );
    // A file that cannot be read is refused when the store is built, naming its setting.
    let config = builder("rediss://127.0.0.1:6380")
        .redis_ca_file("/nonexistent/ca.crt")
        .build()
        .unwrap();
    let err = Limiter::redis(config).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                setting: "TORN_QUOTA_REDIS_CA_FILE",
                ..
            }
        ),
        "{err:?}"
    );
}

/// The settings reach the configuration.
#[cfg(feature = "settings")]
#[test]
fn tls_settings_are_read() {
    let env = |name: &str| match name {
        "REDIS_URL" => Some("rediss://127.0.0.1:6380".into()),
        "TORN_QUOTA_REDIS_CA_FILE" => Some("/etc/tq/ca.pem".into()),
        _ => None,
    };
    let config = torn_quota::settings::Settings::from_sources(None, env)
        .unwrap()
        .rate_limit()
        .unwrap();
    assert_eq!(
        config.redis_ca_file(),
        Some(std::path::Path::new("/etc/tq/ca.pem"))
    );
    let env = |name: &str| match name {
        "REDIS_URL" => Some("rediss://127.0.0.1:6380".into()),
        "TORN_QUOTA_REDIS_CLIENT_KEY_FILE" => Some("/etc/tq/client.key".into()),
        _ => None,
    };
    let err = torn_quota::settings::Settings::from_sources(None, env)
        .unwrap()
        .rate_limit()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                setting: "TORN_QUOTA_REDIS_CLIENT_CERT_FILE",
                ..
            }
        ),
        "{err:?}"
    );
}
