-- A removed key is a tombstone: the row keeps its hash, owner and dates for history, and its
-- ciphertext is destroyed, so that a leaked encryption key together with an old dump of this
-- table opens no key its owner took back. Best effort: PostgreSQL keeps the old row version
-- until VACUUM reclaims it, and WAL archives and backups keep theirs until they expire.
ALTER TABLE sentinel_user_keys ALTER COLUMN api_key_encrypted DROP NOT NULL;

UPDATE sentinel_user_keys SET api_key_encrypted = NULL WHERE deleted_at IS NOT NULL;

-- Live rows hold a ciphertext, removed rows none: the table itself keeps the promise.
ALTER TABLE sentinel_user_keys
    ADD CONSTRAINT sentinel_user_keys_removed_hold_no_ciphertext
    CHECK ((deleted_at IS NULL) = (api_key_encrypted IS NOT NULL));
