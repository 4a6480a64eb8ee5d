//! `torn-quota migrate`, `torn-quota keys ...` and `torn-quota import-legacy`: the key vault
//! from the command line. Keys come from stdin or the environment, never from argv, and are
//! printed masked only.

use std::io::{IsTerminal, Read};
use std::num::{NonZeroU32, NonZeroU64};
use std::process::ExitCode;

use serde_json::{Value, json};
use torn_quota::torn::{TornClient, TornErrorCode};
use torn_quota::vault::{AddOptions, StoredKey, StoredKeyId, Vault, migrate};
use torn_quota::{ApiKey, AppUserId, Error, Limiter};
use zeroize::Zeroizing;

use super::{CliResult, Settings, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {}

#[derive(Debug, clap::Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Reads one key from stdin, checks it with Torn, stores it encrypted. Exit 1 when the
    /// key is malformed or Torn refuses it (nothing is stored then).
    Add(AddArgs),
    /// The account's keys, masked: one JSON object per key.
    List(UserArgs),
    /// Removes a key (soft delete). Exit 1 when the account holds no such key.
    Remove(IdArgs),
    /// Makes a key the account's primary.
    Primary(IdArgs),
    /// Re-encrypts every stored key under the first key of TORN_QUOTA_ENCRYPTION_KEY.
    /// Exit 1 when some rows could not be decrypted (they are listed).
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct UserArgs {
    /// The account id (UUID, `auth.users.id`).
    #[arg(long, value_parser = app_user)]
    user: AppUserId,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The account id (UUID, `auth.users.id`).
    #[arg(long, value_parser = app_user)]
    user: AppUserId,
    /// Make it the account's primary key (an account's first key is anyway).
    #[arg(long)]
    primary: bool,
    /// The owner's share of the key for pooled use, in requests per minute (default: all).
    #[arg(long)]
    max_per_minute: Option<NonZeroU32>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    /// The account id (UUID, `auth.users.id`).
    #[arg(long, value_parser = app_user)]
    user: AppUserId,
    /// The key's id, as `keys list` shows it.
    #[arg(long, value_parser = key_id)]
    id: StoredKeyId,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    /// Rows re-encrypted per transaction.
    #[arg(long, default_value = "100")]
    batch_size: NonZeroU64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImportLegacyArgs {
    /// The account that takes over the key in TORN_API_KEY (UUID, `auth.users.id`).
    #[arg(long, value_parser = app_user)]
    user: AppUserId,
}

fn app_user(raw: &str) -> Result<AppUserId, String> {
    raw.parse()
        .map_err(|_| format!("'{raw}' is not an account id (a UUID)"))
}

fn key_id(raw: &str) -> Result<StoredKeyId, String> {
    raw.parse()
        .map_err(|_| format!("'{raw}' is not a key id (a UUID, as `keys list` shows)"))
}

/// `torn-quota migrate`.
pub(crate) async fn run_migrate(settings: &Settings, _args: MigrateArgs) -> CliResult {
    // A backfill of a large legacy table may take longer than any statement timeout.
    let db = settings.database()?.statement_timeout(None);
    let pool = db.connect().await?;
    let report = migrate(&pool).await?;
    for m in &report.applied {
        eprintln!("applied {:04} {}", m.version, m.description);
    }
    eprintln!(
        "{}: {} migration(s) applied, {} already in place",
        db.url().redacted(),
        report.applied.len(),
        report.already_applied
    );
    emit(&json!({
        "applied": report
            .applied
            .iter()
            .map(|m| json!({ "version": m.version, "description": m.description }))
            .collect::<Vec<_>>(),
        "already_applied": report.already_applied,
    }));
    Ok(ExitCode::SUCCESS)
}

/// `torn-quota keys ...`.
pub(crate) async fn run_keys(settings: &Settings, args: KeysArgs) -> CliResult {
    let vault = open_vault(settings).await?;
    match args.command {
        KeysCommand::Add(a) => add(&vault, a, settings).await,
        KeysCommand::List(a) => list(&vault, &a).await,
        KeysCommand::Remove(a) => {
            let removed = vault.remove_key(a.user, a.id).await?;
            emit(
                &json!({ "id": a.id.to_string(), "user": a.user.to_string(), "removed": removed }),
            );
            if removed {
                eprintln!("key {} removed", a.id);
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "account {} holds no live key {}: nothing removed",
                    a.user, a.id
                );
                Ok(ExitCode::from(1))
            }
        }
        KeysCommand::Primary(a) => {
            vault.set_primary(a.user, a.id).await?;
            eprintln!("key {} is now the primary key of {}", a.id, a.user);
            emit(&json!({ "id": a.id.to_string(), "user": a.user.to_string(), "primary": true }));
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate(a) => rotate(&vault, &a).await,
    }
}

/// `torn-quota import-legacy`.
pub(crate) async fn run_import_legacy(settings: &Settings, args: ImportLegacyArgs) -> CliResult {
    let raw = Zeroizing::new(std::env::var("TORN_API_KEY").unwrap_or_default());
    if raw.trim().is_empty() {
        return Err(Error::Config {
            setting: "TORN_API_KEY",
            reason: "is not set; import-legacy stores the key it holds".into(),
        }
        .into());
    }
    let key = ApiKey::new(raw.trim()).map_err(|e| Error::Config {
        setting: "TORN_API_KEY",
        reason: match e {
            Error::InvalidArgument { reason, .. } => reason,
            other => other.to_string(),
        },
    })?;
    let vault = open_vault(settings).await?;
    let resolver = resolver(settings).await?;
    let imported = match vault.import_legacy(args.user, &key, &resolver).await {
        Err(e) if is_refusal(&e) => return Ok(refused(&e)),
        other => other?,
    };
    let k = &imported.added.key;
    eprintln!(
        "{} {} for {} (Torn player {}); {} legacy rate-limit row(s) now belong to the account",
        if imported.added.created {
            "stored"
        } else if imported.added.reenabled {
            "re-enabled"
        } else {
            "already stored:"
        },
        k.masked.as_deref().unwrap_or("the key"),
        k.user,
        k.owner,
        imported.rate_limit_rows
    );
    let mut out = key_json(k);
    out["created"] = json!(imported.added.created);
    out["reenabled"] = json!(imported.added.reenabled);
    out["rate_limit_rows"] = json!(imported.rate_limit_rows);
    emit(&out);
    Ok(ExitCode::SUCCESS)
}

async fn open_vault(settings: &Settings) -> Result<Vault, Error> {
    let config = settings.vault()?;
    Vault::connect(&config).await
}

async fn add(vault: &Vault, args: AddArgs, settings: &Settings) -> CliResult {
    let key = match read_key() {
        Ok(key) => key,
        Err(e) => return Ok(refused(&e)),
    };
    let options = AddOptions {
        primary: args.primary,
        max_requests_per_minute: args.max_per_minute,
    };
    let resolver = resolver(settings).await?;
    let added = match vault
        .add_key_with(args.user, &key, &resolver, options)
        .await
    {
        Err(e) if is_refusal(&e) => return Ok(refused(&e)),
        other => other?,
    };
    let k = &added.key;
    if added.created {
        eprintln!(
            "stored {} for {}: Torn player {}, access {}",
            key.masked(),
            k.user,
            k.owner,
            k.access
        );
    } else if added.reenabled {
        eprintln!(
            "{} is stored for {} (key {}) and torn accepts it again: re-enabled \
             (Torn player {}, access {})",
            key.masked(),
            k.user,
            k.id,
            k.owner,
            k.access
        );
    } else {
        eprintln!(
            "{} is already stored for {} (key {}); torn confirms it: Torn player {}, access {}",
            key.masked(),
            k.user,
            k.id,
            k.owner,
            k.access
        );
    }
    let mut out = key_json(k);
    out["created"] = json!(added.created);
    out["reenabled"] = json!(added.reenabled);
    emit(&out);
    Ok(ExitCode::SUCCESS)
}

async fn list(vault: &Vault, args: &UserArgs) -> CliResult {
    let keys = vault.list_keys(args.user).await?;
    for k in &keys {
        if k.masked.is_none() {
            eprintln!(
                "warning: key {} cannot be decrypted with the configured encryption keys \
                 (sealed with '{}')",
                k.id, k.encryption_key
            );
        }
        emit(&key_json(k));
    }
    eprintln!("{} key(s) for {}", keys.len(), args.user);
    Ok(ExitCode::SUCCESS)
}

async fn rotate(vault: &Vault, args: &RotateArgs) -> CliResult {
    eprintln!(
        "re-encrypting under encryption key '{}'",
        vault.keyring().current_id()
    );
    let report = vault
        .rotate(args.batch_size, |p| {
            eprintln!(
                "rotated {}/{}{}",
                p.done,
                p.total,
                if p.failed > 0 {
                    format!(", {} unreadable", p.failed)
                } else {
                    String::new()
                }
            );
        })
        .await?;
    for id in &report.failed {
        eprintln!(
            "warning: key {id} cannot be decrypted with any configured encryption key; \
             keep the old keys configured until it is removed or repaired"
        );
    }
    eprintln!(
        "{} key(s) re-encrypted under '{}'",
        report.rotated, report.encryption_key
    );
    emit(&json!({
        "encryption_key": report.encryption_key.as_str(),
        "rotated": report.rotated,
        "failed": report.failed.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }));
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn key_json(k: &StoredKey) -> Value {
    json!({
        "id": k.id.to_string(),
        "user": k.user.to_string(),
        "key": k.masked,
        "owner": k.owner.get(),
        "access_level": k.access.number(),
        "primary": k.is_primary,
        "max_requests_per_minute": k.max_requests_per_minute.map(NonZeroU32::get),
        "created_at": k.created_at.to_rfc3339(),
        "last_used_at": k.last_used_at.map(|t| t.to_rfc3339()),
        "disabled_at": k.disabled.map(|d| d.at.to_rfc3339()),
        "disabled_code": k.disabled.and_then(|d| d.code).map(TornErrorCode::get),
        "encryption_key": k.encryption_key.as_str(),
    })
}

/// The most stdin `keys add` reads: a key is 16 characters, so anything this long is not
/// one key, and reading on would let a runaway pipe fill memory.
const STDIN_LIMIT: u64 = 4096;

/// Reads exactly one key from stdin. On a terminal it prompts (on stderr) and reads one line;
/// otherwise it reads to the end, refusing more than [`STDIN_LIMIT`] bytes, so a second key
/// anywhere in the input is seen and refused rather than silently dropped.
fn read_key() -> Result<ApiKey, Error> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("paste the Torn API key, then Enter: ");
        let mut line = Zeroizing::new(String::new());
        stdin.read_line(&mut line).map_err(|_| unreadable())?;
        return one_key(&line);
    }
    key_from(stdin.lock())
}

fn key_from(input: impl Read) -> Result<ApiKey, Error> {
    let mut bytes = Zeroizing::new(Vec::new());
    input
        .take(STDIN_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| unreadable())?;
    if bytes.len() as u64 > STDIN_LIMIT {
        return Err(Error::InvalidArgument {
            name: "api key",
            reason: format!(
                "stdin holds more than {STDIN_LIMIT} bytes; pipe exactly one key into the command"
            ),
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| unreadable())?;
    one_key(text)
}

fn one_key(text: &str) -> Result<ApiKey, Error> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(key), None) => ApiKey::new(key),
        (None, _) => Err(Error::InvalidArgument {
            name: "api key",
            reason: "stdin holds no key; pipe exactly one key into the command".into(),
        }),
        (Some(_), Some(_)) => Err(Error::InvalidArgument {
            name: "api key",
            reason: "stdin holds more than one word; pipe exactly one key into the command".into(),
        }),
    }
}

fn unreadable() -> Error {
    Error::InvalidArgument {
        name: "api key",
        reason: "stdin could not be read as text".into(),
    }
}

/// A key that cannot be stored: malformed, or refused by Torn.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Torn { .. }
            | Error::InvalidArgument {
                name: "api key",
                ..
            }
    )
}

fn refused(e: &Error) -> ExitCode {
    let code = match e {
        Error::Torn { code, .. } => Some(code.get()),
        _ => None,
    };
    let reason = match e {
        Error::Torn { code, message } if *code == TornErrorCode::INCORRECT_KEY => {
            format!("torn says the key is incorrect ({message})")
        }
        Error::Torn { code, message } => {
            format!("torn refused the key: code {}, {message}", code.get())
        }
        Error::InvalidArgument { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    eprintln!("refused: {reason}; nothing was stored");
    emit(&json!({ "stored": false, "torn_code": code, "reason": reason }));
    ExitCode::from(1)
}

/// The owner resolver the key commands use: the Torn client, which the vault asks now
/// ([`TornClient::key_info`]) for every key it stores or re-enables, so the call is
/// counted on the owner's quota like every other call (on Redis when it answers; else in
/// this process only, which is said on stderr).
async fn resolver(settings: &Settings) -> Result<TornClient, Error> {
    let limits = settings.rate_limit()?;
    let limiter = Limiter::redis(limits.clone())?;
    let limiter = if limiter.ping().await.is_ok() {
        limiter
    } else {
        eprintln!(
            "note: redis at {} does not answer; the key check is counted in this process only",
            limits.redis_target_redacted()
        );
        Limiter::in_memory(limits)
    };
    super::rollout::client(settings, limiter, settings.torn_client()?)
}
