//! The Torn client against the simulator over real sockets, with real Redis: malformed keys
//! and keys in a path never sent, v2 and v1 calls, the owner's and the IP's quota, the owner
//! cache, shutdown and deadlines, a request's timeout counted from its grant, leases
//! released only by their holder, and keys that never reach a log line, a URL or an error.
//! Error codes: torn_client_codes.rs; retries: torn_client_retries.rs.

mod common;

use common::torn_client::{
    FULL_A, FULL_B, INACTIVE, JAILED, LIMIT, MINIMAL, OWNER_4, PAUSED, SPARE, SlowFirstGrant,
    UNKNOWN, WINDOW_MS, assert_clean, assert_no_key, assert_no_key_in_urls, captured,
    captured_text, client_config, key, limiter, sent_with, setup, sim_config, start_sim,
};

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use torn_quota::Error;
use torn_quota::gate::QuotaGate;
use torn_quota::sim::{Fault, SimHandle};
use torn_quota::torn::TornClient;
use torn_quota::vault::ResolveOwner;
use torn_quota::{AccessLevel, ApiKey, KeyBuilder, KeyHash, KeyInfo, Limiter, TornUserId, Wait};

#[tokio::test]
async fn a_malformed_key_or_a_key_in_the_path_never_leaves() {
    let s = setup("malformed", |c| c).await;
    // Code 1 (empty key) cannot happen: an ApiKey is never empty.
    for bad in ["", "short", "FullKeyOfOwner04!", "FullKeyOfOwner0!"] {
        let err = ApiKey::new(bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    name: "api key",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_clean(&err);
    }
    let k = key(FULL_A);
    for path in [
        "user/basic?key=FullKeyOfOwner04",
        "user/basic?striptags=false&key=x",
        "user/FullKeyOfOwner04/basic",
        "https://api.torn.com/v2/user/basic",
        "",
    ] {
        let err = s.client.get(&k, path).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { name: "path", .. }),
            "{err:?}"
        );
        assert_clean(&err);
    }
    let err = s
        .client
        .get_v1(&k, "user", &["basic", "key=x"])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidArgument {
            name: "selections",
            ..
        }
    ));
    assert_eq!(s.sim.counters().requests, 0, "nothing was sent");
}

#[tokio::test]
async fn v2_and_v1_calls_answer_with_the_key_in_the_header() {
    let s = setup("calls", |c| c).await;
    let k = key(FULL_A);
    let me = s
        .client
        .get(&k, "user/basic?striptags=false")
        .await
        .unwrap();
    assert_eq!(me["profile"]["id"], 4);
    let other = s.client.get(&k, "/v2/user/77/basic").await.unwrap();
    assert_eq!(other["profile"]["id"], 77);
    let v1 = s.client.get_v1(&k, "user/12", &["basic"]).await.unwrap();
    assert_eq!(v1["player_id"], 12);
    let info = s.client.get_v1(&k, "key/", &["info"]).await.unwrap();
    assert_eq!(info["access_level"], 4);
    // One key-info call resolved the owner, then four calls.
    assert_eq!(sent_with(&s.sim, FULL_A), 5);
    assert_eq!(s.limiter.status(OWNER_4).await.unwrap().used, 5);
    assert_no_key_in_urls(&s.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_of_one_owner_use_the_whole_quota_without_code_5() {
    // A margin of 100 ms: on a loaded machine the gap between grant and arrival can vary by
    // more than 20 ms, and this test must not flake on it.
    let s = setup("hammer", |c| c.safety_margin(Duration::from_millis(100))).await;
    let keys = [key(FULL_A), key(FULL_B)];
    for k in &keys {
        s.client.owner_of(k).await.unwrap();
    }
    let windows = 3;
    let end = Instant::now() + Duration::from_millis(WINDOW_MS * windows);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = s.client.clone();
        let k = keys[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let opts = Wait::forever().until(end);
            let mut ok = 0u32;
            loop {
                match client.get_with(&k, "user/basic", &opts).await {
                    Ok(_) => ok += 1,
                    Err(Error::Deadline) => return ok,
                    Err(e) => panic!("unexpected failure: {e}"),
                }
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let c = s.sim.counters();
    assert_eq!(c.errors(5), 0, "{c:?}");
    let admitted = c.admitted_by_owner[&OWNER_4];
    let full = u64::from(LIMIT) * windows;
    assert!(admitted * 10 >= full * 9, "used {admitted} of {full}");
    assert!(c.max_in_window_by_owner[&OWNER_4] <= LIMIT);
    assert_eq!(
        admitted,
        u64::from(ok) + 2,
        "every admitted request but key info answered"
    );
    assert_no_key_in_urls(&s.sim);
}

#[tokio::test]
async fn the_ip_bucket_is_a_second_limit() {
    captured();
    // The owner's window is long, so every grant stays visible; the IP's is short.
    let sim = start_sim(
        sim_config(LIMIT, 10_000)
            .ip_limit(NonZeroU32::new(3).unwrap())
            .ip_window(Duration::from_millis(WINDOW_MS)),
    )
    .await;
    let limiter = limiter("ip", LIMIT, 10_000).await;
    let config = client_config(&sim)
        .ip_limit(NonZeroU32::new(3).unwrap())
        .ip_window(Duration::from_millis(WINDOW_MS))
        .build()
        .unwrap();
    let client = TornClient::new(limiter.clone(), config).unwrap();
    let k = key(FULL_A);
    let started = Instant::now();
    client.owner_of(&k).await.unwrap();
    for _ in 0..4 {
        client.get(&k, "user/basic").await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the fourth IP unit waited for the IP window: {:?}",
        started.elapsed()
    );
    let c = sim.counters();
    assert_eq!((c.errors(8), c.admitted), (0, 5), "{c:?}");
    assert_eq!(
        limiter.status(OWNER_4).await.unwrap().used,
        5,
        "owner units taken while the IP bucket was full went back"
    );
    let ip_keys = common::keys_under(&format!("{}:ip", limiter.config().key_prefix())).await;
    assert!(
        !ip_keys.is_empty(),
        "the ip bucket lives in Redis under the prefix + :ip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_of_is_cached_shared_and_expires() {
    let s = setup("cache", |c| c.owner_cache_ttl(Duration::from_millis(400))).await;
    let k = key(FULL_A);
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, k) = (s.client.clone(), k.clone());
        lookups.spawn(async move { client.owner_of(&k).await });
    }
    for info in lookups.join_all().await {
        let info = info.unwrap();
        assert_eq!((info.owner, info.access), (OWNER_4, AccessLevel::Full));
    }
    assert_eq!(
        sent_with(&s.sim, FULL_A),
        1,
        "concurrent misses made one request"
    );
    let info = ResolveOwner::resolve(&s.client, &k).await.unwrap();
    assert_eq!(info.owner, OWNER_4);
    s.client.get(&k, "user/basic").await.unwrap();
    assert_eq!(sent_with(&s.sim, FULL_A), 2, "cached: only the call itself");
    // The key-info call was counted on the owner's bucket once the owner was known.
    assert_eq!(s.limiter.status(OWNER_4).await.unwrap().used, 2);

    tokio::time::sleep(Duration::from_millis(500)).await;
    s.client.owner_of(&k).await.unwrap();
    assert_eq!(sent_with(&s.sim, FULL_A), 3, "expired after the TTL");
    // key_info always asks Torn; the owner is known, so it waits for the owner's quota.
    let info = s.client.key_info(&k).await.unwrap();
    assert_eq!(info.access, AccessLevel::Full);
    assert_eq!(sent_with(&s.sim, FULL_A), 4);
}

#[tokio::test]
async fn shutdown_and_deadlines_end_waiting_calls() {
    captured();
    let sim = start_sim(sim_config(LIMIT, WINDOW_MS)).await;
    let limiter = limiter("shutdown", 2, 60_000).await;
    let token = CancellationToken::new();
    let client = TornClient::builder(limiter.clone(), client_config(&sim).build().unwrap())
        .shutdown(token.clone())
        .build()
        .unwrap();
    let k = key(FULL_A);
    client.owner_of(&k).await.unwrap();
    client.get(&k, "user/basic").await.unwrap();
    // The owner's 2 units are spent for a minute: calls wait.
    let err = client
        .get_with(
            &k,
            "user/basic",
            &Wait::forever().at_most(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline), "{err:?}");

    let call = CancellationToken::new();
    let waiting = {
        let (client, k, call) = (client.clone(), k.clone(), call.clone());
        tokio::spawn(async move {
            client
                .get_with(&k, "user/basic", &Wait::forever().cancel_on(call))
                .await
        })
    };
    call.cancel();
    assert!(matches!(waiting.await.unwrap(), Err(Error::Cancelled)));

    let waiting = {
        let (client, k) = (client.clone(), k.clone());
        tokio::spawn(async move { client.get(&k, "user/basic").await })
    };
    token.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(2), waiting).await;
    assert!(matches!(ended.unwrap().unwrap(), Err(Error::Cancelled)));
    assert!(matches!(client.owner_of(&k).await, Err(Error::Cancelled)));
    assert_eq!(sent_with(&sim, FULL_A), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_reaches_logs_errors_or_urls() {
    let s = setup("leak", |c| c.max_attempts(2)).await;
    let mut errors = Vec::new();
    let full = key(FULL_A);
    s.client.owner_of(&full).await.unwrap();
    for fault in [
        Fault::Code(17),
        Fault::Code(17),
        Fault::Http(500),
        Fault::MalformedJson,
        Fault::DropConnection,
        Fault::DropConnection,
    ] {
        s.sim.inject(fault);
    }
    for _ in 0..4 {
        if let Err(e) = s.client.get(&full, "user/basic").await {
            errors.push(e);
        }
    }
    for k in [UNKNOWN, JAILED, INACTIVE, PAUSED] {
        errors.push(s.client.get(&key(k), "user/basic").await.unwrap_err());
        errors.push(s.client.get(&key(k), "user/basic").await.unwrap_err());
    }
    errors.push(
        s.client
            .get(&key(MINIMAL), "user/battlestats")
            .await
            .unwrap_err(),
    );
    errors.push(
        s.client
            .get(&full, "user/basic?key=FullKeyOfOwner04")
            .await
            .unwrap_err(),
    );
    s.sim.inject(Fault::Code(8));
    errors.push(s.client.get(&full, "user/basic").await.unwrap_err());
    errors.push(
        s.client
            .get_with(
                &key(SPARE),
                "user/basic",
                &Wait::forever().at_most(Duration::from_millis(10)),
            )
            .await
            .unwrap_err(),
    );
    assert!(errors.len() >= 12, "{errors:?}");
    for e in &errors {
        assert_clean(e);
    }
    assert_no_key(&format!("{:?}", s.client), "the client's Debug");
    assert_no_key(&format!("{:?}", s.client.config()), "the config's Debug");
    assert_no_key_in_urls(&s.sim);

    let logs = captured_text();
    assert!(
        logs.contains("torn call failed, retrying") && logs.contains("torn refused the key"),
        "the client's own events are captured"
    );
    assert!(
        logs.contains("reqwest") || logs.contains("hyper"),
        "the HTTP stack's events are captured too"
    );
    assert!(logs.contains("owner=4"), "log lines name the owner");
    assert_no_key(&logs, "the tracing output");
}

// ---------------------------------------------------------------------------------------
// A request's timeout counts from its grant: its units are held for the request timeout
// from the grant, so a request that leaves late gets only what is left, or a new ticket.

/// A simulator, and a client whose gate decides owners through a [`SlowFirstGrant`], with
/// one attempt a call and `FULL_A`'s owner known.
async fn slow_first_grant(
    name: &str,
    timeout: Duration,
    delay: Duration,
) -> (SimHandle, TornClient, Limiter, Arc<SlowFirstGrant>) {
    captured();
    // A long window: every unit the test counts is still in it at the end.
    let sim = start_sim(sim_config(LIMIT, 60_000)).await;
    let limiter = limiter(name, LIMIT, 60_000).await;
    let config = client_config(&sim)
        .request_timeout(timeout)
        .max_attempts(1)
        .build()
        .unwrap();
    let slow = Arc::new(SlowFirstGrant::new(limiter.clone(), delay));
    let gate = QuotaGate::builder(limiter.clone(), &config)
        .owner_quota(slow.clone())
        .build()
        .unwrap();
    let client = TornClient::builder(limiter.clone(), config)
        .gate(gate)
        .build()
        .unwrap();
    let info = KeyInfo {
        owner: OWNER_4,
        access: AccessLevel::Full,
    };
    client.remember_owner(&key(FULL_A), info).await;
    (sim, client, limiter, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_stale_before_its_send_goes_back_and_a_new_one_is_sent() {
    let timeout = Duration::from_millis(300);
    // Longer than the timeout: the first ticket's units are no longer held by its send.
    let (sim, client, limiter, slow) =
        slow_first_grant("stale-ticket", timeout, Duration::from_millis(450)).await;
    let me = client.get(&key(FULL_A), "user/basic").await.unwrap();
    assert_eq!(me["profile"]["id"], 4);

    assert_eq!(
        slow.late_arrival(&sim, OWNER_4, timeout),
        None,
        "a request reached torn this many µs after its grant, past the {timeout:?} its \
         units are held for"
    );
    assert_eq!(sim.admissions(OWNER_4).len(), 1, "one request reached torn");
    assert_eq!(slow.asked_us().len(), 2, "the stale ticket was replaced");
    // Nothing lost and nothing left over: the stale ticket's units went back (owner and
    // IP), the new one's were settled.
    assert_eq!(limiter.status(OWNER_4).await.unwrap().used, 1);
    let ip = client
        .ip_limiter()
        .status(TornUserId::new(0))
        .await
        .unwrap();
    assert_eq!(ip.used, 1);
    assert_eq!(sim.counters().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_late_has_only_what_is_left_of_its_timeout() {
    let timeout = Duration::from_millis(2000);
    // Half the timeout gone before the send: enough left to send on.
    let (sim, client, limiter, slow) =
        slow_first_grant("late-send", timeout, Duration::from_millis(1000)).await;
    // Torn answers within a timeout counted from the send, not within what is left of it.
    sim.inject(Fault::Slow(Duration::from_millis(1500)));
    let started = Instant::now();
    let result = client.get(&key(FULL_A), "user/basic").await;
    let took = started.elapsed();
    let err = result.expect_err("the answer came after the ticket's deadline");
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert_eq!(slow.asked_us().len(), 1, "sent on its ticket");
    // Cut at the grant plus the timeout (the send plus the timeout would be 3 s).
    assert!(
        took >= timeout && took < Duration::from_millis(2400),
        "the request ended {took:?} after the call began"
    );
    // It reached Torn: its unit stays held.
    assert_eq!(sim.admissions(OWNER_4).len(), 1);
    assert_eq!(limiter.status(OWNER_4).await.unwrap().used, 1);
}

// ---------------------------------------------------------------------------------------
// Leases (the owner lookup's) are released by compare-and-delete: a holder whose lease
// expired and was taken by another leaves the other's alone.

#[tokio::test]
async fn a_lease_released_after_it_expired_leaves_the_next_holders() {
    let limiter = limiter("lease", LIMIT, WINDOW_MS).await;
    let name = "owner-lookup:lease-test";
    let a = limiter
        .claim_lease(name, Duration::from_millis(300))
        .await
        .unwrap()
        .expect("a free lease");
    assert!(
        limiter
            .claim_lease(name, Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "held by A"
    );
    // A's lease runs out while A still works; B takes it as soon as it is free.
    let b = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(b) = limiter
                .claim_lease(name, Duration::from_secs(60))
                .await
                .unwrap()
            {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("A's lease expires");
    let held = limiter.recall(name).await.unwrap();
    let released = limiter.release_lease(a).await.unwrap();
    assert_eq!(
        limiter.recall(name).await.unwrap(),
        held,
        "B's lease is still there"
    );
    assert!(!released, "A's had gone already");
    assert!(
        limiter
            .claim_lease(name, Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "and still keeps others out"
    );
    assert!(limiter.release_lease(b).await.unwrap());
    assert_eq!(limiter.recall(name).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_lookup_that_outlived_its_lease_leaves_the_next_holders() {
    let s = setup("lookup-lease", |c| c).await;
    let lease = s
        .limiter
        .keys()
        .memo(&KeyBuilder::owner_lookup_name(KeyHash::of(FULL_A).as_str()));
    // The key info call is slow: the lookup holds its lease meanwhile.
    s.sim.inject(Fault::Slow(Duration::from_millis(1000)));
    let client = s.client.clone();
    let lookup = tokio::spawn(async move { client.owner_of(&key(FULL_A)).await });
    let mut c = common::redis_conn().await;
    let token = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let v: Option<String> = redis::cmd("GET")
                .arg(&lease)
                .query_async(&mut c)
                .await
                .unwrap();
            if let Some(v) = v {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the lookup takes its lease");
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "a random token per holder, got {token:?}"
    );
    // As if it expired and another process took it: what that process's SET NX leaves.
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("the-next-holder")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let info = lookup.await.unwrap().unwrap();
    assert_eq!(info.owner, OWNER_4);
    let after: Option<String> = redis::cmd("GET")
        .arg(&lease)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(after.as_deref(), Some("the-next-holder"));
}
