//! The embedded PostgreSQL migrations (`migrations/`), for `torn-quota migrate` and for
//! programs that run them from their own code.

use std::collections::HashMap;

use sqlx::PgPool;
use sqlx::migrate::{Migrate, MigrateError, Migrator};

use crate::error::{Error, Result, Source};

/// The migrations, embedded at build time. Versions 1 to 7 belong to torn-quota; a database
/// that also holds a program's own sqlx migrations keeps working, because versions this set
/// does not know are left alone.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!()
};

/// Checksums (SHA-384, hex) of migrations as an earlier release shipped them, accepted as
/// applied. 0005 learnt to lock the old table before its copy-and-drop: a database that ran
/// the earlier text has done that copy already (the race the lock closes cannot happen there
/// again), so it must neither run it twice nor be refused. Its record is brought up to the
/// embedded checksum, so that sqlx's own [`Migrator`] agrees with [`migrate`].
const SUPERSEDED: &[(i64, &str)] = &[(
    5,
    "1389c3365026d05ff3b6317f30c3934c52fbe142ffe03d48191dea93575a1944\
     c8a626ffbafdb580115dc0ff5446ad23",
)];

/// One migration, by version and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    /// The number the file name starts with.
    pub version: i64,
    /// The rest of the file name, spaces for underscores.
    pub description: String,
}

/// What a run of [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied by this run, in order. Empty when the database was up to date.
    pub applied: Vec<MigrationInfo>,
    /// Migrations found already applied.
    pub already_applied: usize,
}

/// Applies every embedded migration the database lacks, each in its own transaction, under
/// an advisory lock so that several processes starting at once apply each migration once.
/// A second run is a no-op. A migration that was edited after it was applied is refused
/// rather than run again.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), torn_quota::Error> {
/// let report = torn_quota::vault::migrate(&pool).await?;
/// println!("{} applied", report.applied.len());
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &PgPool) -> Result<MigrationReport> {
    let mut conn = pool.acquire().await.map_err(|e| Error::Database {
        operation: "migrate",
        source: Source::new(e),
    })?;
    let result = run(&mut conn).await;
    if result.is_err() {
        // The advisory lock is held by the session; a failed run must not hand a locked
        // connection back to the pool.
        conn.close_on_drop();
    }
    result.map_err(|e| Error::Database {
        operation: "migrate",
        source: Source::new(sqlx::Error::Migrate(Box::new(e))),
    })
}

async fn run(conn: &mut sqlx::PgConnection) -> Result<MigrationReport, MigrateError> {
    conn.lock().await?;
    conn.ensure_migrations_table().await?;
    if let Some(version) = conn.dirty_version().await? {
        return Err(MigrateError::Dirty(version));
    }
    let done: HashMap<i64, _> = conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|m| (m.version, m.checksum))
        .collect();
    let mut report = MigrationReport {
        applied: Vec::new(),
        already_applied: 0,
    };
    for migration in MIGRATOR.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        match done.get(&migration.version) {
            Some(checksum) if *checksum == migration.checksum => report.already_applied += 1,
            Some(checksum) if superseded(migration.version, checksum) => {
                sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
                    .bind(migration.checksum.as_ref())
                    .bind(migration.version)
                    .execute(&mut *conn)
                    .await?;
                tracing::info!(
                    version = migration.version,
                    "migration applied in an earlier release's form; its record now names this one"
                );
                report.already_applied += 1;
            }
            Some(_) => return Err(MigrateError::VersionMismatch(migration.version)),
            None => {
                conn.apply(migration).await?;
                tracing::info!(
                    version = migration.version,
                    description = %migration.description,
                    "migration applied"
                );
                report.applied.push(MigrationInfo {
                    version: migration.version,
                    description: migration.description.to_string(),
                });
            }
        }
    }
    conn.unlock().await?;
    Ok(report)
}

fn superseded(version: i64, checksum: &[u8]) -> bool {
    use std::fmt::Write as _;
    let hex = checksum.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    SUPERSEDED
        .iter()
        .any(|(v, old)| *v == version && *old == hex)
}
