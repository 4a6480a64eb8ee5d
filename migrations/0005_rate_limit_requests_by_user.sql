-- The rate-limit table moves to `sentinel_rate_limit_requests` and learns which account each
-- row belongs to. Every row is kept. Safe where the rename was already done by hand.
DO $$
DECLARE
    old_kind "char";
BEGIN
    SELECT c.relkind INTO old_kind
    FROM pg_class c
    WHERE c.oid = to_regclass('sentinel_rate_limit_requests_per_user');

    IF old_kind IN ('r', 'p') THEN
        IF to_regclass('sentinel_rate_limit_requests') IS NULL THEN
            ALTER TABLE sentinel_rate_limit_requests_per_user
                RENAME TO sentinel_rate_limit_requests;
            ALTER INDEX IF EXISTS sentinel_rate_limit_requests_per_user_key_idx
                RENAME TO sentinel_rate_limit_requests_key_idx;
        ELSE
            -- Both exist: a legacy writer recreated the old table after a rename by hand.
            -- Its rows move across, so none is lost, and the emptied table goes. The lock
            -- comes first: a writer whose insert commits between the copy and the drop
            -- would otherwise lose its row with the table.
            LOCK TABLE sentinel_rate_limit_requests_per_user IN ACCESS EXCLUSIVE MODE;
            INSERT INTO sentinel_rate_limit_requests (api_key_hash, requested_at)
                SELECT api_key_hash, requested_at FROM sentinel_rate_limit_requests_per_user;
            DROP TABLE sentinel_rate_limit_requests_per_user;
        END IF;
    END IF;
END
$$;

ALTER TABLE sentinel_rate_limit_requests
    ADD COLUMN IF NOT EXISTS user_id uuid REFERENCES auth.users (id) ON DELETE SET NULL;

CREATE INDEX IF NOT EXISTS sentinel_rate_limit_requests_user_idx
    ON sentinel_rate_limit_requests (user_id, requested_at DESC);

-- Rows of keys whose account is already known (a database where the mapping was filled
-- before this migration) get it now; `torn-quota import-legacy` does the rest key by key.
UPDATE sentinel_rate_limit_requests r
SET user_id = m.user_id
FROM sentinel_api_key_user_mapping m
WHERE r.api_key_hash = m.api_key_hash
  AND r.user_id IS NULL
  AND m.user_id IS NOT NULL;

-- Legacy writers still insert under the old name while both systems run side by side: a
-- simple view is updatable, so their INSERTs (and cleanup DELETEs) land in the new table.
DO $$
BEGIN
    IF to_regclass('sentinel_rate_limit_requests_per_user') IS NULL THEN
        CREATE VIEW sentinel_rate_limit_requests_per_user AS
            SELECT * FROM sentinel_rate_limit_requests;
    END IF;
END
$$;
