//! Re-encrypting every live row under the keyring's current key.

use std::num::NonZeroU64;

use super::Vault;
use super::rows::{COLUMNS, KeyRow, RotateProgress, RotateReport};
use super::sql::db;
use crate::error::Result;
use crate::vault::StoredKeyId;

impl Vault {
    /// Re-encrypts every live row (removed ones hold no ciphertext) not yet sealed with the
    /// newest encryption key, `batch_size` rows per transaction, calling `progress` after each batch. Rows the
    /// keyring cannot open are skipped and listed in the report; everything else is done.
    /// Safe to interrupt and run again: it resumes where rows still name an old key.
    pub async fn rotate(
        &self,
        batch_size: NonZeroU64,
        mut progress: impl FnMut(&RotateProgress),
    ) -> Result<RotateReport> {
        const OP: &str = "rotate keys";
        let current = self.keyring.current_id().clone();
        let (total,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM sentinel_user_keys \
                 WHERE key_version <> $1 AND deleted_at IS NULL",
        )
        .bind(current.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db(OP))?;
        let mut state = RotateProgress {
            done: 0,
            failed: 0,
            total: u64::try_from(total).unwrap_or_default(),
        };
        let mut failed = Vec::new();
        let mut after = uuid::Uuid::nil();
        loop {
            let mut tx = self.pool.begin().await.map_err(db(OP))?;
            let rows: Vec<KeyRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM sentinel_user_keys \
                 WHERE key_version <> $1 AND id > $2 AND deleted_at IS NULL \
                 ORDER BY id LIMIT $3 FOR UPDATE"
            ))
            .bind(current.as_str())
            .bind(after)
            .bind(i64::try_from(batch_size.get()).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db(OP))?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.id;
            let mut ids = Vec::with_capacity(rows.len());
            let mut sealed = Vec::with_capacity(rows.len());
            for row in &rows {
                match self.open_row(row) {
                    Ok(key) => {
                        sealed.push(self.keyring.seal(&key, row.user(), &key.hash())?);
                        ids.push(row.id);
                    }
                    Err(e) => {
                        tracing::warn!(key_id = %row.id, error = %e, "cannot rotate key");
                        failed.push(StoredKeyId::new(row.id));
                        state.failed += 1;
                    }
                }
            }
            let done = sqlx::query(
                "UPDATE sentinel_user_keys k SET api_key_encrypted = u.sealed, key_version = $3 \
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(id, sealed) \
                 WHERE k.id = u.id AND k.deleted_at IS NULL",
            )
            .bind(&ids)
            .bind(&sealed)
            .bind(current.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db(OP))?;
            tx.commit().await.map_err(db(OP))?;
            state.done += done.rows_affected();
            progress(&state);
        }
        Ok(RotateReport {
            encryption_key: current,
            rotated: state.done,
            failed,
        })
    }
}
