-- 0004: the runners that are alive, each refreshing its own row; and the pending jobs no live
-- runner handles. A new table: nothing on the jobs table is locked.

CREATE TABLE {schema}.runners (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    kinds        text[] NOT NULL,
    queues       text[],
    concurrency  integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    running      integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE {schema}.runners IS
    'outbox runners: one row per live runner, refreshed every few seconds, removed on a clean stop';
COMMENT ON COLUMN {schema}.runners.queues IS 'The queues it serves; NULL: every queue.';
