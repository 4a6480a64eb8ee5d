-- Players' Torn API keys, encrypted with AES-256-GCM (format `v1:<key-id>:<base64>`, see
-- src/vault/crypto.rs). The plain key is never stored; its SHA-256 sits beside the ciphertext
-- because GCM's random nonces make two encryptions of one key differ, so uniqueness has to be
-- decided on the hash.
CREATE TABLE sentinel_user_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    api_key_encrypted text NOT NULL,
    api_key_hash text NOT NULL CHECK (api_key_hash ~ '^[0-9a-f]{64}$'),
    -- The id of the encryption key that sealed the row, so rotation finds the rows it still
    -- has to re-encrypt without decrypting everything.
    key_version text NOT NULL,
    -- The key's owner as Torn reports it: the identity Torn rate-limits.
    torn_user_id bigint NOT NULL CHECK (torn_user_id >= 0),
    access_level smallint NOT NULL CHECK (access_level BETWEEN 0 AND 4),
    -- The owner's share for pooled use, per minute; NULL lends the whole limit.
    max_requests_per_minute integer CHECK (max_requests_per_minute > 0),
    is_primary boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    disabled_at timestamptz,
    -- The Torn error code that disabled the key (2 incorrect, 10 jail, 13 inactive, 18 paused).
    disabled_reason smallint CHECK (disabled_reason >= 0),
    deleted_at timestamptz,
    CHECK (disabled_reason IS NULL OR disabled_at IS NOT NULL)
);

-- One live row per key and account: a second add is a no-op, and a removed key can be added
-- again.
CREATE UNIQUE INDEX sentinel_user_keys_live_key_idx
    ON sentinel_user_keys (user_id, api_key_hash) WHERE deleted_at IS NULL;

-- At most one primary key per account.
CREATE UNIQUE INDEX sentinel_user_keys_one_primary_idx
    ON sentinel_user_keys (user_id) WHERE is_primary AND deleted_at IS NULL;

-- Torn's verdict on a key (code 2) concerns every account that stored it.
CREATE INDEX sentinel_user_keys_hash_idx
    ON sentinel_user_keys (api_key_hash) WHERE deleted_at IS NULL;

-- No policy on purpose: on Supabase, PostgREST's anon and authenticated roles see nothing,
-- while the table's owner and BYPASSRLS roles (service_role) work as before.
ALTER TABLE sentinel_user_keys ENABLE ROW LEVEL SECURITY;
