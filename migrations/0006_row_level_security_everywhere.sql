-- Row-level security on every table of `public`, fresh and adopted databases alike. Supabase
-- grants its API roles (`anon`, `authenticated`) every privilege on `public`; without RLS
-- they could read, insert and delete legacy rate-limit rows. As in 0003: no policy on
-- purpose, so those roles see nothing while the tables' owner and BYPASSRLS roles (Supabase's
-- `service_role`, the legacy writer's usual role) work as before. A legacy writer running as
-- any other role needs a policy of the operator's making.
ALTER TABLE sentinel_rate_limit_requests ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    t record;
BEGIN
    -- Row-level security does not cover TRUNCATE: take that from the API roles where they
    -- exist (Supabase), on the tables this tool keeps.
    FOR t IN SELECT unnest(ARRAY['sentinel_rate_limit_requests', 'sentinel_user_keys',
                                 'sentinel_api_key_user_mapping']) AS name LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
            EXECUTE format('REVOKE TRUNCATE ON %I FROM anon', t.name);
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
            EXECUTE format('REVOKE TRUNCATE ON %I FROM authenticated', t.name);
        END IF;
    END LOOP;

    -- The old name is a view over the new table (0005). A view runs with its owner's rights
    -- unless told otherwise, which would read past the table's RLS for anyone allowed the
    -- view; with security_invoker (PostgreSQL 15) the caller's rights and RLS apply.
    IF (SELECT relkind FROM pg_class
        WHERE oid = to_regclass('sentinel_rate_limit_requests_per_user')) = 'v' THEN
        ALTER VIEW sentinel_rate_limit_requests_per_user SET (security_invoker = true);
    END IF;

    -- sqlx's own record of applied migrations sits in `public` too: a forged row would make
    -- a migration look applied. Its owner (the role that migrates) bypasses RLS; only the
    -- owner may change it, so another role leaves it as it is, and says so.
    IF to_regclass('_sqlx_migrations') IS NOT NULL THEN
        IF pg_has_role(current_user,
                       (SELECT relowner FROM pg_class WHERE oid = to_regclass('_sqlx_migrations')),
                       'USAGE') THEN
            ALTER TABLE _sqlx_migrations ENABLE ROW LEVEL SECURITY;
        ELSE
            RAISE NOTICE '_sqlx_migrations is not owned by %: row-level security left to its owner',
                current_user;
        END IF;
    END IF;
END
$$;
