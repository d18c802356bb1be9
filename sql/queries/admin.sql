-- Operator actions on single jobs.

-- name: cancel
-- A pending job is cancelled; so is a running one: its outcome is then never recorded and it
-- is never retried (its runner stops the handler at the next heartbeat where it can).
UPDATE {schema}.jobs
SET state = 'cancelled', finished_at = now(), leased_until = NULL, updated_at = now()
WHERE id = %s AND state IN ('pending', 'running')
RETURNING id

-- name: discard
-- An operator gives up on a pending or running job: it ends 'discarded' with the reason, and a
-- running one's outcome is never recorded (as for cancel).
UPDATE {schema}.jobs
SET state = 'discarded', finished_at = now(), leased_until = NULL, updated_at = now(),
    last_error = %(error)s::text,
    errors = jsonb_path_query_array(
        errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', now(), 'error', %(error)s::text)),
        '$[last - 9 to last]')
WHERE id = %(id)s AND state IN ('pending', 'running')
RETURNING id

-- name: retry
-- Run jobs again now: those that failed, were discarded or cancelled go back to pending (a
-- pending one just runs now). A job whose attempts are spent gets one more. A job is skipped
-- while another live job holds its unique key. Keyset batches: the ids picked in this state
-- after %(after)s; returns the last id picked, how many were picked and the ids made pending.
WITH picked AS (
    SELECT id FROM {schema}.jobs
    WHERE state = %(state)s::{schema}.job_state
      AND id > %(after)s
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(kind)s::text IS NULL OR kind = %(kind)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), retried AS (
    UPDATE {schema}.jobs j
    SET state = 'pending', run_at = now(), finished_at = NULL, leased_until = NULL, updated_at = now(),
        max_attempts = greatest(j.max_attempts, j.attempts + 1)
    FROM picked
    WHERE j.id = picked.id
      AND (j.unique_key IS NULL OR NOT EXISTS (
          SELECT FROM {schema}.jobs live
          WHERE live.kind = j.kind AND live.unique_key = j.unique_key
            AND live.state IN ('pending', 'running') AND live.id <> j.id))
    RETURNING j.id
)
SELECT (SELECT max(id) FROM picked), (SELECT count(*) FROM picked), (SELECT array_agg(id) FROM retried)

-- name: wake_runners
SELECT pg_notify(%s::text, '')

-- name: count_jobs
SELECT count(*) FROM {schema}.jobs
WHERE state = %(state)s::{schema}.job_state
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)

-- name: flush
-- Delete a batch of unfinished (pending or running) jobs of a queue and/or kind, on purpose.
-- A runner holding a deleted job's lease finds it gone: its outcome is never written.
DELETE FROM {schema}.jobs
WHERE id IN (
    SELECT id FROM {schema}.jobs
    WHERE state IN ('pending', 'running')
      AND (%(kind)s::text IS NULL OR kind = %(kind)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
    LIMIT %(limit)s
    FOR UPDATE
)
RETURNING id

-- name: count_unfinished
SELECT count(*) FROM {schema}.jobs
WHERE state IN ('pending', 'running')
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
