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

-- name: applied_versions
SELECT version FROM {schema}.migrations ORDER BY version

-- name: record_migration
INSERT INTO {schema}.migrations (version, name) VALUES (%s, %s)

-- name: migrations_table_exists
SELECT to_regclass(format('%%I.migrations', %s::text)) IS NOT NULL

-- name: schema_version
SELECT coalesce(max(version), 0) FROM {schema}.migrations
