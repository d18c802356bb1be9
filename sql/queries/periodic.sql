-- Periodic schedules (see outbox/periodic.py): one row per schedule, holding its next tick.

-- name: now
SELECT now()

-- name: register_periodic
-- New schedules start at their next tick; a schedule whose definition changed starts again.
INSERT INTO {schema}.periodic AS p (name, schedule, next_run_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT (name) DO UPDATE
SET schedule = EXCLUDED.schedule, next_run_at = EXCLUDED.next_run_at, updated_at = now()
WHERE p.schedule <> EXCLUDED.schedule

-- name: due_periodic
-- Due schedules, locked for this transaction; another runner skips them and finds them moved.
SELECT name, next_run_at, now() FROM {schema}.periodic
WHERE name = ANY(%s::text[]) AND next_run_at <= now()
FOR UPDATE SKIP LOCKED

-- name: fire_periodic
-- Enqueue one tick's job and move the schedule past it, guarded by the tick that was read.
WITH due AS (
    SELECT name FROM {schema}.periodic WHERE name = %(name)s AND next_run_at = %(due)s
), job AS (
    INSERT INTO {schema}.jobs (kind, queue, payload, priority, max_attempts, unique_key, metadata)
    SELECT %(kind)s, %(queue)s, %(payload)s::jsonb, %(priority)s, %(max_attempts)s,
           %(unique_key)s, %(metadata)s::jsonb
    FROM due
    ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')
    DO NOTHING
    RETURNING id
)
UPDATE {schema}.periodic
SET next_run_at = %(next)s, last_job_id = coalesce((SELECT id FROM job), last_job_id),
    updated_at = now()
WHERE name = %(name)s AND next_run_at = %(due)s
RETURNING (SELECT id FROM job)

-- name: next_periodic
SELECT min(next_run_at), now() FROM {schema}.periodic WHERE name = ANY(%s::text[])
