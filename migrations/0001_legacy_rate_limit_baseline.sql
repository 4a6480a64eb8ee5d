-- Baseline: the table the legacy per-key limiter writes (one row per request, 50 per minute
-- per key hash). A database that already has it, under its old name or under the name 0005
-- gives it, is adopted untouched; a fresh database gets it here so that every later migration
-- finds the same starting point.
DO $$
BEGIN
    IF to_regclass('sentinel_rate_limit_requests_per_user') IS NULL
       AND to_regclass('sentinel_rate_limit_requests') IS NULL THEN
        CREATE TABLE sentinel_rate_limit_requests_per_user (
            id bigserial PRIMARY KEY,
            -- Lowercase hex SHA-256 of the key: the legacy limiter never stores a key.
            api_key_hash text NOT NULL,
            requested_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX sentinel_rate_limit_requests_per_user_key_idx
            ON sentinel_rate_limit_requests_per_user (api_key_hash, requested_at DESC);
    END IF;
END
$$;
