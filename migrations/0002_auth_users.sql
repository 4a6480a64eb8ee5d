-- The accounts keys belong to. On Supabase `auth.users` already exists (and is Supabase's to
-- manage), so nothing is created there; plain PostgreSQL gets the one column the vault needs.
-- Existence is checked first because a role may be refused CREATE on a schema it cannot own.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
    END IF;
    IF to_regclass('auth.users') IS NULL THEN
        CREATE TABLE auth.users (id uuid PRIMARY KEY);
    END IF;
END
$$;
