//! The key vault through the operator CLI: one session end to end and bad settings refused
//! without echoing secrets. Torn is the project's simulator.
//!
//! Every test creates its own PostgreSQL database (dropped at the end), so tests run in
//! parallel and never see each other's rows; no mock of PostgreSQL anywhere. PostgreSQL:
//! `TORN_QUOTA_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test` (a role
//! that may create databases).

#![cfg(feature = "cli")]

mod common;

use common::pg::TestDb;
use common::vault::{KEY_A, KEY_B, count, new_user, random_key};
use common::vault_cli::Cli;
use torn_quota::TornUserId;
use torn_quota::sim::{SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::{AccessLevel, ApiKey};

/// Torn for the session: the simulator, knowing `keys` (key, owner, access level); any other
/// key is incorrect (code 2), as on Torn.
async fn torn(keys: &[(&ApiKey, u64, AccessLevel)]) -> SimHandle {
    let keys = keys
        .iter()
        .map(|(k, owner, level)| SimKey::new(k.expose(), TornUserId::new(*owner), *level));
    Simulator::start(keys, SimConfig::default())
        .await
        .expect("start the simulator")
}

// One operator session end to end: each step starts from the state the previous one left.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_migrates_adds_lists_removes_rotates_and_imports() {
    let db = TestDb::new("vault").await;
    let (good, second, legacy, wrong) = (random_key(), random_key(), random_key(), random_key());
    let sim = torn(&[
        (&good, 4, AccessLevel::Full),
        (&second, 4, AccessLevel::Limited),
        (&legacy, 9, AccessLevel::Minimal),
    ])
    .await;
    let cli = Cli {
        database_url: db.url.clone(),
        torn: sim.base_url(),
        encryption_key: format!("old:{KEY_A}"),
    };

    let first = cli.run(&["migrate"], "", &[]).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(first.json()[0]["applied"].as_array().unwrap().len(), 7);
    let second_run = cli.run(&["migrate"], "", &[]).await;
    assert_eq!(second_run.code, Some(0));
    assert_eq!(second_run.json()[0]["applied"].as_array().unwrap().len(), 0);
    assert_eq!(second_run.json()[0]["already_applied"], 7);

    let user = new_user(&db.pool).await.to_string();
    let add = |key: &ApiKey| format!("{}\n", key.expose());

    let added = cli
        .run(&["keys", "add", "--user", &user], &add(&good), &[])
        .await;
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    let row = &added.json()[0];
    assert_eq!(row["created"], true);
    assert_eq!(row["owner"], 4);
    assert_eq!(row["access_level"], 4);
    assert_eq!(row["key"], good.masked());
    assert!(!added.stdout.contains(good.expose()) && !added.stderr.contains(good.expose()));
    let again = cli
        .run(&["keys", "add", "--user", &user], &add(&good), &[])
        .await;
    assert_eq!(again.code, Some(0));
    assert_eq!(again.json()[0]["created"], false);
    assert_eq!(again.json()[0]["id"], row["id"]);

    // Malformed and incorrect keys are refused with exit 1, and nothing is stored.
    for (input, needle) in [
        ("short\n", "16 characters"),
        ("AAAA-bbbb-CCCC-1\n", "A-Z"),
        ("", "no key"),
        (
            &format!("{} {}\n", good.expose(), second.expose()),
            "more than one",
        ),
        // A second key far down the input is still a second key: stdin is read to its end.
        (
            &format!(
                "{}\n{}{}\n",
                good.expose(),
                " ".repeat(4090),
                second.expose()
            ),
            "more than",
        ),
        (
            &format!("{}\n{}", good.expose(), "\n".repeat(5000)),
            "4096 bytes",
        ),
        (&add(&wrong), "incorrect"),
    ] {
        let refused = cli.run(&["keys", "add", "--user", &user], input, &[]).await;
        assert_eq!(refused.code, Some(1), "{input:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(needle),
            "{input:?}: {}",
            refused.stderr
        );
        assert_eq!(refused.json()[0]["stored"], false);
        assert!(!refused.stderr.contains(wrong.expose()));
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys").await,
        1
    );
    // An account that does not exist is an error (exit 2), not a refusal of the key.
    let stranger = uuid::Uuid::new_v4().to_string();
    let no_account = cli
        .run(&["keys", "add", "--user", &stranger], &add(&second), &[])
        .await;
    assert_eq!(no_account.code, Some(2));
    assert!(
        no_account.stderr.contains("auth.users"),
        "{}",
        no_account.stderr
    );

    let added2 = cli
        .run(
            &["keys", "add", "--user", &user, "--max-per-minute", "30"],
            &add(&second),
            &[],
        )
        .await;
    assert_eq!(added2.code, Some(0), "{}", added2.stderr);
    assert_eq!(added2.json()[0]["max_requests_per_minute"], 30);
    assert_eq!(added2.json()[0]["primary"], false);

    let listed = cli.run(&["keys", "list", "--user", &user], "", &[]).await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let keys = listed.json();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["key"], good.masked());
    assert_eq!(keys[0]["primary"], true);
    for k in [&good, &second] {
        assert!(!listed.stdout.contains(k.expose()) && !listed.stderr.contains(k.expose()));
    }

    let id = keys[1]["id"].as_str().unwrap().to_owned();
    let primary = cli
        .run(&["keys", "primary", "--user", &user, "--id", &id], "", &[])
        .await;
    assert_eq!(primary.code, Some(0), "{}", primary.stderr);
    let removed = cli
        .run(&["keys", "remove", "--user", &user, "--id", &id], "", &[])
        .await;
    assert_eq!(removed.code, Some(0), "{}", removed.stderr);
    assert_eq!(removed.json()[0]["removed"], true);
    let twice = cli
        .run(&["keys", "remove", "--user", &user, "--id", &id], "", &[])
        .await;
    assert_eq!(twice.code, Some(1));
    let listed = cli.run(&["keys", "list", "--user", &user], "", &[]).await;
    assert_eq!(listed.json().len(), 1);
    assert_eq!(
        listed.json()[0]["primary"],
        true,
        "the remaining key took over"
    );

    // import-legacy: the key in TORN_API_KEY, and its legacy rows.
    sqlx::query(
        "INSERT INTO sentinel_rate_limit_requests (api_key_hash) \
         SELECT $1 FROM generate_series(1, 12)",
    )
    .bind(legacy.hash().as_str())
    .execute(&db.pool)
    .await
    .unwrap();
    let imported = cli
        .run(
            &["import-legacy", "--user", &user],
            "",
            &[("TORN_API_KEY", legacy.expose())],
        )
        .await;
    assert_eq!(imported.code, Some(0), "{}", imported.stderr);
    assert_eq!(imported.json()[0]["rate_limit_rows"], 12);
    assert_eq!(imported.json()[0]["owner"], 9);
    assert!(
        !imported.stdout.contains(legacy.expose()) && !imported.stderr.contains(legacy.expose())
    );
    let no_key = cli.run(&["import-legacy", "--user", &user], "", &[]).await;
    assert_eq!(no_key.code, Some(2));
    assert!(no_key.stderr.contains("TORN_API_KEY"), "{}", no_key.stderr);

    // Rotation to a new key; then the old key can go.
    let both = format!("new:{KEY_B},old:{KEY_A}");
    let rotated = cli
        .run(
            &["keys", "rotate", "--batch-size", "1"],
            "",
            &[("TORN_QUOTA_ENCRYPTION_KEY", &both)],
        )
        .await;
    assert_eq!(rotated.code, Some(0), "{}", rotated.stderr);
    assert_eq!(
        rotated.json()[0]["rotated"],
        2,
        "the two live rows; the removed one holds no ciphertext"
    );
    assert!(rotated.stderr.contains("rotated 2/2"), "{}", rotated.stderr);
    let new_only = format!("new:{KEY_B}");
    let listed = cli
        .run(
            &["keys", "list", "--user", &user],
            "",
            &[("TORN_QUOTA_ENCRYPTION_KEY", &new_only)],
        )
        .await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    assert!(
        listed
            .json()
            .iter()
            .all(|k| k["key"].is_string() && k["encryption_key"] == "new")
    );
    sim.shutdown().await;
}

/// Arguments, extra environment, and what stderr must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn the_cli_refuses_bad_settings_naming_them_without_echoing_secrets() {
    let cli = Cli {
        database_url: "postgres://app:hunter2secret@127.0.0.1:9/nowhere".into(),
        torn: "http://127.0.0.1:9".into(),
        encryption_key: KEY_A.into(),
    };
    let user = uuid::Uuid::new_v4().to_string();
    let cases: [Case<'_>; 6] = [
        (
            &["migrate"],
            &[("DATABASE_URL", "mysql://app:hunter2secret@h/db")],
            "DATABASE_URL",
        ),
        (
            &["keys", "list", "--user", &user],
            &[("TORN_QUOTA_ENCRYPTION_KEY", "hunter2secret")],
            "TORN_QUOTA_ENCRYPTION_KEY",
        ),
        (
            &["keys", "list", "--user", &user],
            &[("TORN_QUOTA_ENCRYPTION_KEY", "")],
            "TORN_QUOTA_ENCRYPTION_KEY",
        ),
        (
            &["migrate"],
            &[("TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS", "300")],
            "cannot connect to PostgreSQL at 127.0.0.1:9",
        ),
        // The driver would log an unknown parameter's value at WARN, and ignore it.
        (
            &["migrate"],
            &[
                (
                    "DATABASE_URL",
                    "postgres://app@127.0.0.1:9/nowhere?sslpassword=hunter2secret",
                ),
                ("RUST_LOG", "trace"),
            ],
            "sslpassword",
        ),
        (
            &["migrate"],
            &[
                (
                    "DATABASE_URL",
                    "postgres://app@127.0.0.1:9/nowhere?sslmode=disable&options=-c%20x%3Dhunter2secret",
                ),
                ("TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS", "300"),
                ("RUST_LOG", "trace"),
            ],
            "127.0.0.1:9",
        ),
    ];
    for (args, env, needle) in cases {
        let ran = cli.run(args, "", env).await;
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(needle), "{args:?}: {}", ran.stderr);
        assert!(!ran.stderr.contains("hunter2secret"), "{}", ran.stderr);
        assert!(!ran.stdout.contains("hunter2secret"));
    }
}
