//! SQL helpers every vault operation shares: the account lock, conversions to columns, and
//! error mapping.

use sqlx::{Postgres, Transaction};

use crate::error::{Error, Result, Source};
use crate::identity::TornUserId;
use crate::torn::TornErrorCode;
use crate::vault::AppUserId;

/// Serializes writes to one account's keys across every process, for the length of the
/// transaction.
pub(super) async fn lock_account(
    tx: &mut Transaction<'_, Postgres>,
    user: AppUserId,
    operation: &'static str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("torn-quota:user-keys:{user}"))
        .execute(&mut **tx)
        .await
        .map_err(db(operation))?;
    Ok(())
}

pub(super) async fn clear_primary(
    tx: &mut Transaction<'_, Postgres>,
    user: AppUserId,
) -> Result<()> {
    sqlx::query(
        "UPDATE sentinel_user_keys SET is_primary = false \
         WHERE user_id = $1 AND is_primary AND deleted_at IS NULL",
    )
    .bind(user.get())
    .execute(&mut **tx)
    .await
    .map_err(db("set primary key"))?;
    Ok(())
}

pub(super) fn torn_id(owner: TornUserId) -> Result<i64> {
    i64::try_from(owner.get()).map_err(|_| Error::InvalidArgument {
        name: "owner",
        reason: format!("Torn user id {owner} does not fit in a PostgreSQL bigint"),
    })
}

pub(super) fn torn_code(code: TornErrorCode) -> i16 {
    i16::try_from(code.get()).unwrap_or(i16::MAX)
}

pub(super) fn no_such_key(user: AppUserId) -> Error {
    Error::InvalidArgument {
        name: "id",
        reason: format!("account {user} holds no live key with this id"),
    }
}

pub(super) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::Database {
        operation,
        source: Source::new(e),
    }
}

/// A foreign-key violation on insert means the account is not in `auth.users`: say so
/// instead of a bare constraint name.
pub(super) fn unknown_account(e: sqlx::Error, user: AppUserId, operation: &'static str) -> Error {
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("23503")
    {
        return Error::InvalidArgument {
            name: "user",
            reason: format!("no account {user} in auth.users"),
        };
    }
    Error::Database {
        operation,
        source: Source::new(e),
    }
}
