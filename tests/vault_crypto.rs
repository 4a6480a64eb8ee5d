//! The key vault's encryption: AES-256-GCM bound to each row, malformed settings, rotation
//! between keys, tombstones, and the cipher crates built to wipe their keys.
//!
//! Every test creates its own PostgreSQL database (dropped at the end), so tests run in
//! parallel and never see each other's rows; no mock of PostgreSQL anywhere. PostgreSQL:
//! `TORN_QUOTA_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test` (a role
//! that may create databases).

mod common;

use std::num::NonZeroU64;

use common::pg::TestDb;
use common::vault::{KEY_A, KEY_B, MapResolver, count, keyring, new_user, random_key};
use torn_quota::ApiKey;
use torn_quota::Error;
use torn_quota::vault::{AppUserId, EncryptionKeyId, Keyring, Vault};

// ---------------------------------------------------------------------------------------
// Crypto
// ---------------------------------------------------------------------------------------

fn crypto_reason(r: Result<ApiKey, Error>) -> String {
    match r {
        Err(Error::Crypto { reason }) => reason,
        other => panic!("expected a crypto error, got {other:?}"),
    }
}

#[test]
fn encryption_round_trips_and_binds_each_ciphertext_to_its_row() {
    let ring = keyring(&format!("a:{KEY_A}"));
    let key = random_key();
    let (alice, bob) = (
        AppUserId::new(uuid::Uuid::new_v4()),
        AppUserId::new(uuid::Uuid::new_v4()),
    );
    let sealed = ring.seal(&key, alice, &key.hash()).unwrap();
    assert!(sealed.starts_with("v1:a:"), "{sealed}");
    assert!(!sealed.contains(key.expose()));
    assert_eq!(ring.open(&sealed, alice, &key.hash()).unwrap(), key);
    assert_eq!(Keyring::key_id_of(&sealed).unwrap().as_str(), "a");

    // Another account's row, or another key's hash: the associated data differs.
    let reason = crypto_reason(ring.open(&sealed, bob, &key.hash()));
    assert!(reason.contains("authentication failed"), "{reason}");
    let other = random_key();
    crypto_reason(ring.open(&sealed, alice, &other.hash()));

    // Any flipped bit of the nonce, body or tag.
    let body = sealed.strip_prefix("v1:a:").unwrap();
    let mut blob = base64_decode(body);
    for i in [0, 12, blob.len() - 1] {
        blob[i] ^= 0x01;
        let tampered = format!("v1:a:{}", base64_encode(&blob));
        let reason = crypto_reason(ring.open(&tampered, alice, &key.hash()));
        assert!(!reason.contains(key.expose()));
        blob[i] ^= 0x01;
    }
    // A truncated one.
    crypto_reason(ring.open(&sealed[..sealed.len() - 4], alice, &key.hash()));

    // The right id with the wrong key material.
    let wrong = keyring(&format!("a:{KEY_B}"));
    let reason = crypto_reason(wrong.open(&sealed, alice, &key.hash()));
    assert!(reason.contains("authentication failed"), "{reason}");
    // A key id that is not configured is named as such.
    let elsewhere = keyring(&format!("b:{KEY_B}"));
    let reason = crypto_reason(elsewhere.open(&sealed, alice, &key.hash()));
    assert!(
        reason.contains("'a'") && reason.contains("not configured"),
        "{reason}"
    );
    // Relabelling a ciphertext with another configured id does not help either.
    let both = keyring(&format!("b:{KEY_B},a:{KEY_A}"));
    crypto_reason(both.open(&format!("v1:b:{body}"), alice, &key.hash()));
    assert_eq!(both.open(&sealed, alice, &key.hash()).unwrap(), key);
}

#[test]
fn a_malformed_encryption_key_setting_names_the_setting_and_not_the_value() {
    for bad in ["", "c2hvcnQ=", "a:not-base64!", &format!("{KEY_A},{KEY_A}")] {
        match Keyring::from_setting(Some(bad)) {
            Err(Error::Config { setting, reason }) => {
                assert_eq!(setting, "TORN_QUOTA_ENCRYPTION_KEY");
                assert!(bad.is_empty() || !reason.contains(bad), "{reason}");
            }
            other => panic!("{bad}: expected a config error, got {other:?}"),
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn a_ciphertext_copied_onto_another_accounts_row_does_not_decrypt() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let key = random_key();
    let resolver = MapResolver::with(&[(&key, 4)]);
    let (alice, mallory) = (new_user(&db.pool).await, new_user(&db.pool).await);
    vault.add_key(alice, &key, &resolver).await.unwrap();
    vault.add_key(mallory, &key, &resolver).await.unwrap();
    assert_eq!(vault.live_keys(&[mallory]).await.unwrap().len(), 1);

    sqlx::query(
        "UPDATE sentinel_user_keys m SET api_key_encrypted = a.api_key_encrypted \
         FROM sentinel_user_keys a WHERE m.user_id = $1 AND a.user_id = $2",
    )
    .bind(mallory.get())
    .bind(alice.get())
    .execute(&db.pool)
    .await
    .unwrap();
    match vault.live_keys(&[mallory]).await {
        Err(Error::Crypto { reason }) => {
            assert!(reason.contains("authentication failed"), "{reason}");
            assert!(!reason.contains(key.expose()));
        }
        other => panic!("expected a crypto error, got {other:?}"),
    }
    let listed = vault.list_keys(mallory).await.unwrap();
    assert_eq!(listed[0].masked, None, "listed, but not readable");
    assert_eq!(vault.live_keys(&[alice]).await.unwrap()[0].key, key);
}

#[tokio::test]
async fn rotation_reads_old_rows_reencrypts_all_and_then_the_old_key_can_go() {
    let db = TestDb::migrated("vault").await;
    let old = Vault::new(db.pool.clone(), keyring(&format!("old:{KEY_A}")));
    let (u1, u2) = (new_user(&db.pool).await, new_user(&db.pool).await);
    let keys: Vec<ApiKey> = (0..5).map(|_| random_key()).collect();
    let resolver = MapResolver::with(&keys.iter().map(|k| (k, 7)).collect::<Vec<_>>());
    for (i, k) in keys.iter().enumerate() {
        let user = if i % 2 == 0 { u1 } else { u2 };
        old.add_key(user, k, &resolver).await.unwrap();
    }
    // A removed row holds no ciphertext: rotation passes it by, and the old key can still go.
    let gone = old.list_keys(u2).await.unwrap()[0].id;
    assert!(old.remove_key(u2, gone).await.unwrap());

    let both = Vault::new(
        db.pool.clone(),
        keyring(&format!("new:{KEY_B},old:{KEY_A}")),
    );
    assert_eq!(
        both.live_keys(&[u1, u2]).await.unwrap().len(),
        4,
        "old rows still read"
    );
    let fresh = random_key();
    resolver.insert(&fresh, 8);
    let added = both.add_key(u1, &fresh, &resolver).await.unwrap();
    assert_eq!(
        added.key.encryption_key.as_str(),
        "new",
        "the first key encrypts"
    );

    let mut seen = Vec::new();
    let report = both
        .rotate(NonZeroU64::new(2).unwrap(), |p| seen.push(*p))
        .await
        .unwrap();
    assert_eq!(report.rotated, 4);
    assert!(report.failed.is_empty());
    assert_eq!(report.encryption_key, EncryptionKeyId::new("new").unwrap());
    assert_eq!(seen.len(), 2, "batches of 2: {seen:?}");
    assert_eq!(seen.last().map(|p| (p.done, p.total)), Some((4, 4)));
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys WHERE deleted_at IS NULL AND (key_version <> 'new' OR api_key_encrypted NOT LIKE 'v1:new:%')").await,
        0
    );

    // The old key is gone from the configuration: every row that holds a key opens.
    let new_only = keyring(&format!("new:{KEY_B}"));
    let rows: Vec<(String, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT api_key_encrypted, user_id, api_key_hash FROM sentinel_user_keys \
         WHERE api_key_encrypted IS NOT NULL",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    let all: Vec<&ApiKey> = keys.iter().chain([&fresh]).collect();
    for (sealed, user, hash) in &rows {
        let key = all
            .iter()
            .find(|k| k.hash().as_str() == hash)
            .expect("a stored key");
        let opened = new_only
            .open(sealed, AppUserId::new(*user), &key.hash())
            .unwrap_or_else(|e| panic!("a row does not open with the new key alone: {e}"));
        assert_eq!(&opened, *key);
    }
    let after = Vault::new(db.pool.clone(), new_only);
    assert_eq!(after.live_keys(&[u1, u2]).await.unwrap().len(), 5);
    let again = after
        .rotate(NonZeroU64::new(10).unwrap(), |_| {})
        .await
        .unwrap();
    assert_eq!(again.rotated, 0);
}

#[tokio::test]
async fn a_removed_key_leaves_a_tombstone_without_ciphertext_that_rotation_skips() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(&format!("old:{KEY_A}")));
    let (gone, kept) = (random_key(), random_key());
    let resolver = MapResolver::with(&[(&gone, 4), (&kept, 4)]);
    let user = new_user(&db.pool).await;
    let removed = vault.add_key(user, &gone, &resolver).await.unwrap().key;
    vault.add_key(user, &kept, &resolver).await.unwrap();
    assert!(vault.remove_key(user, removed.id).await.unwrap());

    let (ciphertext, hash, deleted): (Option<String>, String, bool) = sqlx::query_as(
        "SELECT api_key_encrypted, api_key_hash, deleted_at IS NOT NULL \
         FROM sentinel_user_keys WHERE id = $1",
    )
    .bind(removed.id.get())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ciphertext, None, "a removed key's ciphertext is destroyed");
    assert_eq!(hash, gone.hash().as_str(), "the tombstone keeps the hash");
    assert!(deleted);
    // The table itself refuses a removed row that still holds a ciphertext.
    let sealed: String = sqlx::query_scalar(
        "SELECT api_key_encrypted FROM sentinel_user_keys WHERE deleted_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        sqlx::query("UPDATE sentinel_user_keys SET api_key_encrypted = $1 WHERE id = $2")
            .bind(&sealed)
            .bind(removed.id.get())
            .execute(&db.pool)
            .await
            .is_err()
    );

    let rotating = Vault::new(
        db.pool.clone(),
        keyring(&format!("new:{KEY_B},old:{KEY_A}")),
    );
    let report = rotating
        .rotate(NonZeroU64::new(10).unwrap(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.rotated, 1, "only the live row: {report:?}");
    assert!(report.failed.is_empty(), "{report:?}");

    // The key can be stored again later, as a new row beside its tombstone.
    let back = vault.add_key(user, &gone, &resolver).await.unwrap();
    assert!(back.created);
    assert_ne!(back.key.id, removed.id);
}

// ---------------------------------------------------------------------------------------
// Secrets in memory
// ---------------------------------------------------------------------------------------

/// The cipher's key schedule (`aes`) and the GHASH key (`ghash`, `polyval`) are wiped on drop
/// only when those crates are built with their `zeroize` features; `aes-gcm`'s own feature
/// does not turn them on. Asked of cargo's resolved build (host platform), so the test
/// follows Cargo.toml and Cargo.lock.
#[test]
fn the_cipher_crates_are_built_to_wipe_their_keys() {
    for name in ["aes", "ghash", "polyval", "aes-gcm"] {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "--all-features",
                "--invert",
                name,
                "--depth",
                "0",
                "--prefix",
                "none",
                "--format",
                "{p}|{f}",
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ])
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{name} is not in the build");
        for line in lines {
            let (package, features) = line.split_once('|').unwrap_or((line, ""));
            assert!(
                features.split(',').any(|f| f == "zeroize"),
                "{package} is built without zeroize: [{features}]"
            );
        }
    }
}
