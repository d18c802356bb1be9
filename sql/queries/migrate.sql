-- Migrations and the schema version check.

-- name: migrate_lock
SELECT pg_advisory_xact_lock(hashtext('outbox.migrate.' || %s::text))

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: add_pending_column
-- Since 0005: a migration whose statements after the transaction have not all run yet.
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS pending_concurrently boolean NOT NULL DEFAULT false

-- name: pending_concurrently
SELECT version FROM {schema}.migrations WHERE pending_concurrently ORDER BY version

-- name: finish_concurrently
UPDATE {schema}.migrations SET pending_concurrently = false WHERE version = %s

-- name: applied_versions
SELECT version FROM {schema}.migrations ORDER BY version

-- name: record_migration
INSERT INTO {schema}.migrations (version, name, pending_concurrently) VALUES (%s, %s, %s)

-- name: migrations_table_exists
SELECT to_regclass(format('%%I.migrations', %s::text)) IS NOT NULL

-- name: schema_version
SELECT coalesce(max(version), 0) FROM {schema}.migrations

-- name: migrate_session_lock
-- The same lock as migrate_lock, held by the session across the statements that run outside a
-- transaction.
SELECT pg_advisory_lock(hashtext('outbox.migrate.' || %s::text))

-- name: migrate_session_unlock
SELECT pg_advisory_unlock(hashtext('outbox.migrate.' || %s::text))

-- name: invalid_indexes
-- Indexes left invalid by a CREATE INDEX CONCURRENTLY that was interrupted: dropped, then built again.
SELECT c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND NOT i.indisvalid
