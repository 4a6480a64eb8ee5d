//! The Lua contract as another language sees it: raw EVAL of the files in `lua/`, no Rust
//! limiter in between.

mod common;

use redis::aio::MultiplexedConnection;
use torn_quota::{KeyBuilder, TornUserId, lua};

async fn eval(
    conn: &mut MultiplexedConnection,
    script: &str,
    keys: &[&str],
    args: &[&str],
) -> redis::RedisResult<Vec<i64>> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
    cmd.query_async(conn).await
}

#[tokio::test]
async fn minimal_call_keeps_the_contract() {
    let mut c = common::redis_conn().await;
    let keys = KeyBuilder::new(common::unique_prefix("lua")).bucket(TornUserId::new(9));
    let k = [keys.state.as_str()];
    assert_eq!(
        eval(&mut c, lua::ACQUIRE, &k, &["3", "2000", "2"])
            .await
            .unwrap(),
        vec![1, 1, 0]
    );
    assert_eq!(
        eval(&mut c, lua::ACQUIRE, &k, &["3", "2000", "1"])
            .await
            .unwrap(),
        vec![1, 0, 0]
    );
    let denied = eval(&mut c, lua::ACQUIRE, &k, &["3", "2000", "1"])
        .await
        .unwrap();
    assert_eq!(denied.len(), 3);
    assert_eq!(&denied[..2], &[0, 0]);
    assert!(
        denied[2] > 1_500 && denied[2] <= 2_001,
        "retry_after_ms {}",
        denied[2]
    );
    // The state expires on its own one window after the last grant.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys.state)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 1_500 && ttl <= 2_001, "pttl {ttl}");
    // status consumes nothing.
    let s = eval(&mut c, lua::STATUS, &k, &["3", "2000"]).await.unwrap();
    assert_eq!(&s[..3], &[3, 3, 0]);
    assert_eq!(
        eval(&mut c, lua::STATUS, &k, &["3", "2000"]).await.unwrap()[0],
        3
    );
}

#[tokio::test]
async fn time_comes_from_redis() {
    let mut c = common::redis_conn().await;
    let keys = KeyBuilder::new(common::unique_prefix("lua")).bucket(TornUserId::new(9));
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let before = secs * 1000 + micros / 1000;
    let reply = eval(
        &mut c,
        lua::ACQUIRE,
        &[&keys.state],
        &["3", "2000", "1", "0", "1"],
    )
    .await
    .unwrap();
    assert_eq!(reply.len(), 4, "ARGV[5] = 1 appends the decision's time");
    let at = reply[3] as u64;
    assert!(at >= before && at < before + 1_000, "{at} vs {before}");
}

#[tokio::test]
async fn bad_arguments_get_an_error_naming_them() {
    let mut c = common::redis_conn().await;
    let keys = KeyBuilder::new(common::unique_prefix("lua")).bucket(TornUserId::new(9));
    let k = [keys.state.as_str()];
    for (args, named) in [
        (vec!["0", "1000", "1"], "ARGV[1] limit"),
        (vec!["x", "1000", "1"], "ARGV[1] limit"),
        (vec!["2.5", "1000", "1"], "ARGV[1] limit"),
        (vec!["5", "0", "1"], "ARGV[2] window_ms"),
        (vec!["5", "1000", "0"], "ARGV[3] cost"),
        (vec!["5", "1000", "-1"], "ARGV[3] cost"),
        (vec!["5", "1000", "1", "z"], "ARGV[4] reserve"),
        (vec!["5", "1000", "1", "0", "2"], "ARGV[5] with_time"),
        (vec!["5", "1000", "6"], "cost 6 exceeds the limit 5"),
        (vec!["5", "1000"], "ARGV[3] cost"),
    ] {
        let err = eval(&mut c, lua::ACQUIRE, &k, &args).await.unwrap_err();
        assert!(err.to_string().contains(named), "{args:?}: {err}");
    }
    let err = eval(&mut c, lua::PENALIZE, &[&keys.penalty], &["soon"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ARGV[1] hold_ms"), "{err}");
    let err = eval(&mut c, lua::REFUND, &[&keys.state], &["1", "0"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ARGV[2] cost"), "{err}");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&keys.state)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists, "a refused call records nothing");
}

#[tokio::test]
async fn optional_keys_extend_the_call() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua"));
    let keys = kb.bucket(TornUserId::new(9));
    let all = [
        keys.state.as_str(),
        keys.limit.as_str(),
        keys.penalty.as_str(),
    ];
    // Override in KEYS[2] replaces ARGV[1].
    let _: () = redis::cmd("SET")
        .arg(&keys.limit)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        eval(&mut c, lua::ACQUIRE, &all, &["50", "2000", "1"])
            .await
            .unwrap(),
        vec![1, 0, 0]
    );
    assert_eq!(
        eval(&mut c, lua::ACQUIRE, &all, &["50", "2000", "1"])
            .await
            .unwrap()[0],
        0
    );
    let _: () = redis::cmd("DEL")
        .arg(&keys.limit)
        .query_async(&mut c)
        .await
        .unwrap();
    // Penalty in KEYS[3] holds the bucket full.
    let held: i64 = redis::cmd("EVAL")
        .arg(lua::PENALIZE)
        .arg(1)
        .arg(&keys.penalty)
        .arg(800)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(held > 600 && held <= 800, "{held}");
    let r = eval(&mut c, lua::ACQUIRE, &all, &["50", "2000", "1"])
        .await
        .unwrap();
    assert_eq!(r[0], 0);
    assert!(r[2] > 600 && r[2] <= 800, "{r:?}");
    // Every key of a user shares one hash tag, so a script stays on one cluster slot.
    let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
    let idem = kb.idempotency(TornUserId::new(9), "id-1");
    for k in [&keys.limit, &keys.penalty, &idem] {
        assert_eq!(tag(k), tag(&keys.state));
    }
}

/// One `acquire_many` call as the Rust client sends it: four keys and six arguments per
/// decision, the reply entries as decisions or error strings.
async fn eval_many(
    conn: &mut MultiplexedConnection,
    decisions: &[([&str; 4], [&str; 6])],
) -> redis::RedisResult<Vec<redis::Value>> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(lua::acquire_many_source()).arg(decisions.len() * 4);
    for (keys, _) in decisions {
        cmd.arg(keys);
    }
    cmd.arg(decisions.len());
    for (_, args) in decisions {
        cmd.arg(args);
    }
    cmd.query_async(conn).await
}

fn ints(v: &redis::Value) -> Vec<i64> {
    match v {
        redis::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                redis::Value::Int(n) => *n,
                other => panic!("not an integer: {other:?}"),
            })
            .collect(),
        other => panic!("not a decision: {other:?}"),
    }
}

#[tokio::test]
async fn acquire_many_decides_like_acquire_in_order() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-many"));
    let (a, b) = (kb.bucket(TornUserId::new(1)), kb.bucket(TornUserId::new(2)));
    let idem = kb.idempotency(TornUserId::new(1), "call-7");
    let ka = [a.state.as_str(), a.limit.as_str(), a.penalty.as_str(), ""];
    let ka_idem = [
        a.state.as_str(),
        a.limit.as_str(),
        a.penalty.as_str(),
        idem.as_str(),
    ];
    let kb2 = [b.state.as_str(), b.limit.as_str(), b.penalty.as_str(), ""];
    let args = |cost: &'static str| ["3", "5000", cost, "", "1", ""];

    // Bucket a is asked three times in one batch: each decision sees the ones before it.
    let reply = eval_many(
        &mut c,
        &[
            (ka, args("2")),
            (kb2, args("1")),
            (ka_idem, args("1")),
            (ka, args("1")),
            (ka, args("9")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reply.len(), 5);
    let d: Vec<Vec<i64>> = reply[..4].iter().map(ints).collect();
    assert_eq!(&d[0][..3], &[1, 1, 0], "a takes 2 of 3");
    assert_eq!(&d[1][..3], &[1, 2, 0], "b is its own bucket");
    assert_eq!(&d[2][..3], &[1, 0, 0], "a takes its last unit");
    assert_eq!(&d[3][..2], &[0, 0], "a is full");
    assert!(d[3][2] > 4_000 && d[3][2] <= 5_001, "retry {}", d[3][2]);
    // One time for the whole batch.
    assert!(d.iter().all(|x| x[3] == d[0][3]));
    // A decision acquire.lua refuses is an error string; the others still count.
    match &reply[4] {
        redis::Value::BulkString(msg) => {
            let msg = String::from_utf8_lossy(msg);
            assert!(msg.contains("cost 9 exceeds the limit 3"), "{msg}");
        }
        other => panic!("expected an error string, got {other:?}"),
    }

    // The state the batch left is what acquire.lua reads: a is full, b has 2 left.
    let ka3 = [a.state.as_str()];
    assert_eq!(
        eval(&mut c, lua::ACQUIRE, &ka3, &["3", "5000", "1"])
            .await
            .unwrap()[0],
        0
    );
    let kb3 = [b.state.as_str()];
    assert_eq!(
        eval(&mut c, lua::ACQUIRE, &kb3, &["3", "5000", "1"])
            .await
            .unwrap(),
        vec![1, 1, 0]
    );
    // A replay of the idempotent call returns its first decision and counts nothing.
    let replay = eval_many(&mut c, &[(ka_idem, args("1"))]).await.unwrap();
    assert_eq!(ints(&replay[0]), d[2]);
}

#[tokio::test]
async fn acquire_many_rejects_a_malformed_batch() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-many-bad"));
    let a = kb.bucket(TornUserId::new(1));
    let mut cmd = redis::cmd("EVAL");
    // Two decisions announced, one sent.
    cmd.arg(lua::acquire_many_source())
        .arg(4)
        .arg(&[a.state.as_str(), a.limit.as_str(), a.penalty.as_str(), ""])
        .arg(&["2", "3", "5000", "1", "", "1"]);
    let err = cmd
        .query_async::<redis::Value>(&mut c)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 decisions need 8 keys"), "{err}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&a.state)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0, "nothing recorded");
}

/// Any reply, error or not, of one script call.
async fn eval_raw(
    conn: &mut MultiplexedConnection,
    script: &str,
    keys: &[&str],
    args: &[&str],
) -> redis::RedisResult<redis::Value> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
    cmd.query_async(conn).await
}

async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .unwrap()
        == 1
}

async fn key_type(conn: &mut MultiplexedConnection, key: &str) -> String {
    redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap()
}

/// Issue 12 item 2: every script takes plain decimal integers only.
#[tokio::test]
async fn numbers_are_plain_decimal_integers() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-num"));
    let b = kb.bucket(TornUserId::new(3));
    let state = b.state.as_str();
    for bad in ["1e3", "0x10", " 5", "5 ", "1.5", "-1", "", "inf", "nan"] {
        let calls: [(&str, &str, Vec<&str>, Vec<&str>); 11] = [
            (
                "acquire limit",
                lua::ACQUIRE,
                vec![state],
                vec![bad, "1000", "1"],
            ),
            (
                "acquire window",
                lua::ACQUIRE,
                vec![state],
                vec!["5", bad, "1"],
            ),
            (
                "acquire cost",
                lua::ACQUIRE,
                vec![state],
                vec!["5", "1000", bad],
            ),
            (
                "acquire hold",
                lua::ACQUIRE,
                vec![state],
                vec![
                    "5",
                    "1000",
                    "1",
                    "0",
                    "1",
                    if bad.is_empty() { "x" } else { bad },
                ],
            ),
            ("status limit", lua::STATUS, vec![state], vec![bad, "1000"]),
            ("status window", lua::STATUS, vec![state], vec!["5", bad]),
            ("refund at", lua::REFUND, vec![state], vec![bad, "1"]),
            ("refund cost", lua::REFUND, vec![state], vec!["1", bad]),
            (
                "penalize",
                lua::PENALIZE,
                vec![b.penalty.as_str()],
                vec![bad],
            ),
            ("settle", lua::SETTLE, vec![state], vec!["1", bad, "1000"]),
            ("record", lua::RECORD, vec![state], vec!["1000", bad]),
        ];
        for (what, script, keys, args) in calls {
            let reply = eval_raw(&mut c, script, &keys, &args).await;
            assert!(reply.is_err(), "{what} accepted '{bad}': {reply:?}");
        }
        // acquire_many too, for any decision's argument.
        let reply = eval_raw(
            &mut c,
            &lua::acquire_many_source(),
            &[state, "", "", ""],
            &["1", "5", "1000", bad, "", "1", ""],
        )
        .await;
        assert!(reply.is_err(), "acquire_many accepted '{bad}': {reply:?}");
        assert!(!exists(&mut c, state).await, "'{bad}' wrote a state");
        assert!(!exists(&mut c, &b.penalty).await, "'{bad}' wrote a penalty");
    }
}

/// Issue 12 item 2: a limit or cost above 10 000 would make one call write megabytes and
/// hold Redis for seconds: refused, nothing written.
#[tokio::test]
async fn limit_and_cost_are_bounded() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-bound"));
    let b = kb.bucket(TornUserId::new(3));
    let state = b.state.as_str();
    for args in [
        ["30000000", "1000", "30000000"],
        ["10001", "1000", "1"],
        ["20000", "1000", "10001"],
        ["5", "86400001", "1"],
    ] {
        let err = eval_raw(&mut c, lua::ACQUIRE, &[state], &args)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be an integer from"), "{args:?}: {err}");
    }
    assert!(
        eval_raw(&mut c, lua::RECORD, &[state], &["1000", "10001"])
            .await
            .is_err()
    );
    assert!(!exists(&mut c, state).await);
    // An override above the bound is refused too, not obeyed.
    let _: () = redis::cmd("SET")
        .arg(&b.limit)
        .arg("10001")
        .query_async(&mut c)
        .await
        .unwrap();
    let err = eval_raw(
        &mut c,
        lua::ACQUIRE,
        &[state, &b.limit],
        &["5", "1000", "1"],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("limit override"), "{err}");
    // The bound itself is fine.
    let reply = eval(&mut c, lua::ACQUIRE, &[state], &["10000", "1000", "10000"])
        .await
        .unwrap();
    assert_eq!(reply, vec![1, 0, 0]);
}

/// Issue 12 item 2: a list or hash at any key a script reads is an error reply, never
/// granted, never overwritten.
#[tokio::test]
async fn a_list_or_hash_at_any_key_is_an_error() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-type"));
    let user = TornUserId::new(3);
    let b = kb.bucket(user);
    let idem = kb.idempotency(user, "call-1");
    let keys = [
        b.state.as_str(),
        b.limit.as_str(),
        b.penalty.as_str(),
        idem.as_str(),
    ];
    for (i, key) in keys.iter().enumerate() {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg("f")
            .arg("v")
            .query_async(&mut c)
            .await
            .unwrap();
        let err = eval_raw(&mut c, lua::ACQUIRE, &keys, &["5", "1000", "1"])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a hash"), "KEYS[{}]: {err}", i + 1);
        // In a batch, that decision fails alone; another bucket's decision is granted.
        let other = kb.bucket(TornUserId::new(4));
        let reply = eval_many(
            &mut c,
            &[
                (keys, ["5", "1000", "1", "", "1", ""]),
                (
                    [other.state.as_str(), "", "", ""],
                    ["5", "1000", "1", "", "1", ""],
                ),
            ],
        )
        .await
        .unwrap();
        match &reply[0] {
            redis::Value::BulkString(msg) => {
                assert!(String::from_utf8_lossy(msg).contains("holds a hash"));
            }
            other => panic!("KEYS[{}] in a batch: {other:?}", i + 1),
        }
        assert_eq!(ints(&reply[1])[0], 1);
        assert_eq!(key_type(&mut c, key).await, "hash", "KEYS[{}] kept", i + 1);
        for k in keys.iter().filter(|k| *k != key) {
            assert!(!exists(&mut c, k).await, "{k} written beside a hash");
        }
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // The other scripts refuse a wrong type at the state too.
    let _: () = redis::cmd("RPUSH")
        .arg(&b.state)
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    for (script, args) in [
        (lua::STATUS, vec!["5", "1000"]),
        (lua::REFUND, vec!["1", "1"]),
        (lua::SETTLE, vec!["1", "1", "1000"]),
        (lua::RECORD, vec!["1000", "1"]),
    ] {
        assert!(eval_raw(&mut c, script, &[&b.state], &args).await.is_err());
    }
    assert_eq!(key_type(&mut c, &b.state).await, "list");
}

/// Issue 12 item 2: a state whose length is not a multiple of 6 is not a log: an error,
/// left as it is.
#[tokio::test]
async fn a_state_that_is_not_a_log_is_an_error() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-log"));
    let b = kb.bucket(TornUserId::new(3));
    let state = b.state.as_str();
    let _: () = redis::cmd("SET")
        .arg(state)
        .arg("12345")
        .query_async(&mut c)
        .await
        .unwrap();
    for (script, args) in [
        (lua::ACQUIRE, vec!["5", "1000", "1"]),
        (lua::STATUS, vec!["5", "1000"]),
        (lua::REFUND, vec!["1", "1"]),
        (lua::RECORD, vec!["1000", "1"]),
    ] {
        let err = eval_raw(&mut c, script, &[state], &args)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a log of 6-byte records"), "{err}");
    }
    let reply = eval_raw(&mut c, lua::SETTLE, &[state], &["1", "1", "1000"])
        .await
        .unwrap();
    assert!(format!("{reply:?}").contains("not a log"), "{reply:?}");
    let value: String = redis::cmd("GET")
        .arg(state)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(value, "12345");
}

/// Issue 12 item 2: acquire_many checks every decision's arguments before it writes any.
#[tokio::test]
async fn acquire_many_checks_every_decision_before_writing() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-many-check"));
    let (a, b) = (kb.bucket(TornUserId::new(1)), kb.bucket(TornUserId::new(2)));
    let err = eval_many(
        &mut c,
        &[
            (
                [a.state.as_str(), "", "", ""],
                ["5", "1000", "1", "", "1", ""],
            ),
            (
                [b.state.as_str(), "", "", ""],
                ["5", "1000", "0", "", "1", ""],
            ),
        ],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("decision 2") && err.contains("ARGV[3] cost"),
        "{err}"
    );
    assert!(!exists(&mut c, &a.state).await, "decision 1 was written");
}

/// Issue 12 item 9: a caller with a shorter window does not cut what a longer-window
/// caller counts; status reads the longer window too.
#[tokio::test]
async fn a_shorter_window_does_not_cut_a_longer_ones_records() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-windows"));
    let b = kb.bucket(TornUserId::new(3));
    let k = [b.state.as_str()];
    assert_eq!(
        eval(&mut c, lua::ACQUIRE, &k, &["2", "2000", "2"])
            .await
            .unwrap(),
        vec![1, 0, 0]
    );
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let short = eval(&mut c, lua::ACQUIRE, &k, &["2", "200", "1"])
        .await
        .unwrap();
    assert_eq!(&short[..2], &[0, 0], "{short:?}");
    assert!(short[2] > 1_500, "retry {short:?}");
    let s = eval(&mut c, lua::STATUS, &k, &["2", "200"]).await.unwrap();
    assert_eq!(s[0], 2, "status {s:?}");
    // record.lua and settle.lua keep the longer window as well.
    eval_raw(&mut c, lua::RECORD, &k, &["200", "1"])
        .await
        .unwrap();
    let s = eval(&mut c, lua::STATUS, &k, &["2", "2000"]).await.unwrap();
    assert_eq!(s[0], 3, "status {s:?}");
}

/// settle.lua as another language calls it: restamp by the provisional stamp, several
/// buckets in one call, a too-late settle harmless.
#[tokio::test]
async fn settle_restamps_provisional_records() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-settle"));
    let (a, b) = (kb.bucket(TornUserId::new(1)), kb.bucket(TornUserId::new(2)));
    let ga = eval(
        &mut c,
        lua::ACQUIRE,
        &[&a.state],
        &["2", "300", "2", "0", "1", "60000"],
    )
    .await
    .unwrap();
    let gb = eval(
        &mut c,
        lua::ACQUIRE,
        &[&b.state],
        &["2", "300", "1", "0", "1", "60000"],
    )
    .await
    .unwrap();
    let (sa, sb) = ((ga[3] + 60_000).to_string(), (gb[3] + 60_000).to_string());
    // The provisional records still count long after one window.
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert_eq!(
        eval(&mut c, lua::STATUS, &[&a.state], &["2", "300"])
            .await
            .unwrap()[0],
        2
    );
    let counts = eval(
        &mut c,
        lua::SETTLE,
        &[&a.state, &b.state],
        &[&sa, "2", "300", &sb, "1", "300"],
    )
    .await
    .unwrap();
    assert_eq!(counts, vec![2, 1]);
    // Settled now: they count one window from the settle, then leave.
    let s = eval(&mut c, lua::STATUS, &[&a.state], &["2", "300"])
        .await
        .unwrap();
    assert!(s[0] == 2 && s[3] <= 301, "status {s:?}");
    tokio::time::sleep(std::time::Duration::from_millis(320)).await;
    assert_eq!(
        eval(&mut c, lua::STATUS, &[&a.state], &["2", "300"])
            .await
            .unwrap()[0],
        0
    );
    // Settling again finds nothing: harmless.
    let again = eval(&mut c, lua::SETTLE, &[&a.state], &[&sa, "2", "300"])
        .await
        .unwrap();
    assert_eq!(again, vec![0]);
}

#[tokio::test]
async fn release_deletes_a_lease_only_while_it_holds_the_token() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-release"));
    let lease = kb.memo(&KeyBuilder::owner_lookup_name("ab12"));
    let k = [lease.as_str()];
    // Absent: nothing to release.
    assert_eq!(
        eval_raw(&mut c, lua::RELEASE, &k, &["a"]).await.unwrap(),
        redis::Value::Int(0)
    );
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("b")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    // Another holder's token: left as it is, its ttl too.
    assert_eq!(
        eval_raw(&mut c, lua::RELEASE, &k, &["a"]).await.unwrap(),
        redis::Value::Int(0)
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&lease)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 50_000, "pttl {ttl}");
    // The holder's own: gone.
    assert_eq!(
        eval_raw(&mut c, lua::RELEASE, &k, &["b"]).await.unwrap(),
        redis::Value::Int(1)
    );
    assert!(!exists(&mut c, &lease).await);

    let long = "x".repeat(129);
    for args in [vec![], vec![""], vec![long.as_str()]] {
        let err = eval_raw(&mut c, lua::RELEASE, &k, &args).await.unwrap_err();
        assert!(err.to_string().contains("ARGV[1] token"), "{args:?}: {err}");
    }
    // A lease that is not a string is an error, and is kept.
    let _: () = redis::cmd("RPUSH")
        .arg(&lease)
        .arg("b")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(eval_raw(&mut c, lua::RELEASE, &k, &["b"]).await.is_err());
    assert_eq!(key_type(&mut c, &lease).await, "list");
}

#[tokio::test]
async fn epoch_is_set_once_and_answered_with_the_servers_run_id() {
    let mut c = common::redis_conn().await;
    let kb = KeyBuilder::new(common::unique_prefix("lua-epoch"));
    let epoch = kb.epoch();
    let k = [epoch.as_str()];
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .unwrap();
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .expect("INFO server names the run_id")
        .trim()
        .to_owned();
    let read = |v: redis::Value| -> (String, String) { redis::from_redis_value(v).unwrap() };
    // Missing: the offered value is set, without expiry, and answered.
    let first = read(eval_raw(&mut c, lua::EPOCH, &k, &["aaa"]).await.unwrap());
    assert_eq!(first, ("aaa".to_owned(), run_id.clone()));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&epoch)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "the epoch never expires");
    // Present: kept, whatever another process offers.
    let second = read(eval_raw(&mut c, lua::EPOCH, &k, &["bbb"]).await.unwrap());
    assert_eq!(second, ("aaa".to_owned(), run_id));

    let long = "x".repeat(65);
    for args in [vec![], vec![""], vec![long.as_str()], vec!["a b"]] {
        let err = eval_raw(&mut c, lua::EPOCH, &k, &args).await.unwrap_err();
        assert!(
            err.to_string().contains("ARGV[1] offered"),
            "{args:?}: {err}"
        );
    }
}
