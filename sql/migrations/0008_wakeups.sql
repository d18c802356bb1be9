-- 0008: enqueuers notify only while a runner waits for work.
--
-- Postgres serializes the commits of every transaction that sent a NOTIFY (one lock on the
-- notification queue, held through the commit's flush), so a NOTIFY on every enqueue capped
-- concurrent enqueuers at what one serialized commit at a time allows. A runner that has free
-- slots and found no work says so by moving listened_until, a deadline in epoch milliseconds on
-- the database's clock, a poll interval ahead (and again while it stays idle); the trigger
-- notifies only before that deadline. A sequence, not a row: reading and moving it takes no
-- row lock and leaves no dead row. Runners that are all busy stop moving it, and enqueues then
-- commit without the lock; a runner that runs out of work moves it and leases again (see
-- outbox/runner/dispatcher.py for the transaction that checked the deadline before it moved).
CREATE SEQUENCE {schema}.listened_until MINVALUE 0 START 0;

COMMENT ON SEQUENCE {schema}.listened_until IS
    'Epoch milliseconds until which a runner waits for NOTIFY; enqueues notify only before it.';

CREATE OR REPLACE FUNCTION {schema}.notify_jobs() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT s.last_value FROM {schema}.listened_until s)
       > (extract(epoch FROM clock_timestamp()) * 1000)::bigint THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_jobs', '');
    END IF;
    RETURN NULL;
END
$$;

-- Called by a waiting runner: enqueues notify for the next `seconds` (the deadline only moves
-- forward). Harmless to anyone: at worst enqueues notify as they did before this migration.
CREATE FUNCTION {schema}.listen_for(seconds double precision) RETURNS void
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT setval('{schema}.listened_until', greatest(
        (SELECT s.last_value FROM {schema}.listened_until s),
        (extract(epoch FROM clock_timestamp()) * 1000 + least(greatest(seconds, 0), 3600) * 1000)::bigint))
$$;
