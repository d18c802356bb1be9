-- 0002: job metadata (the trace context active at enqueue) and periodic schedules.

-- outbox's own facts about a job, beside its payload: "trace" holds the W3C trace context
-- (traceparent, tracestate) that was active when it was enqueued. NULL when there is none.
ALTER TABLE {schema}.jobs ADD COLUMN metadata jsonb;
COMMENT ON COLUMN {schema}.jobs.metadata IS
    'outbox''s facts about the job: "trace" is the W3C trace context active at enqueue.';

-- The lease now returns the metadata too (a function's result type cannot be altered).
DROP FUNCTION {schema}.lease_jobs(text[], text[], integer, double precision, text);
CREATE FUNCTION {schema}.lease_jobs(
    kinds text[], queues text[], max_jobs integer, lease_seconds double precision, runner text
) RETURNS TABLE (
    id bigint, kind text, queue text, payload jsonb, priority smallint, attempts integer,
    max_attempts integer, run_at timestamptz, created_at timestamptz, unique_key text,
    metadata jsonb
)
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH next AS (
        SELECT j.id FROM {schema}.jobs j
        WHERE j.state = 'pending'
          AND j.run_at <= now()
          AND j.kind = ANY(kinds)
          AND (queues IS NULL OR j.queue = ANY(queues))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    )
    UPDATE {schema}.jobs j
    SET state = 'running',
        attempts = j.attempts + 1,
        leased_until = now() + make_interval(secs => lease_seconds),
        leased_by = runner
    FROM next
    WHERE j.id = next.id
    RETURNING j.id, j.kind, j.queue, j.payload, j.priority, j.attempts, j.max_attempts,
              j.run_at, j.created_at, j.unique_key, j.metadata;
END
$$;

-- Periodic schedules: one row per schedule name, holding its next tick. A runner enqueues a
-- tick's job in the same transaction as it moves next_run_at past that tick, guarded by the
-- tick it read: of any number of runners, exactly one enqueues each tick.
CREATE TABLE {schema}.periodic (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._:-]{{0,127}}$'),
    schedule     text NOT NULL,
    next_run_at  timestamptz NOT NULL,
    last_job_id  bigint,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {schema}.periodic IS 'outbox periodic schedules: the next tick of each';
