-- A key's hash to its owner, so that a key seen in a request resolves without calling Torn.
-- `user_id` is the account that stored the key, NULL when the key was only seen in a request;
-- `torn_user_id` is the player Torn limits, which never changes for a given key.
CREATE TABLE sentinel_api_key_user_mapping (
    api_key_hash text PRIMARY KEY CHECK (api_key_hash ~ '^[0-9a-f]{64}$'),
    user_id uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    torn_user_id bigint NOT NULL CHECK (torn_user_id >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set when no account holds the key any more; the owner it names stays true.
    deleted_at timestamptz
);

CREATE INDEX sentinel_api_key_user_mapping_user_idx
    ON sentinel_api_key_user_mapping (user_id) WHERE user_id IS NOT NULL;

-- See 0003: no policy, so only the owner and BYPASSRLS roles read it.
ALTER TABLE sentinel_api_key_user_mapping ENABLE ROW LEVEL SECURITY;
