-- Status: what happened to a job, and how many wait or failed per queue and kind.

-- name: get_job
SELECT id, kind, queue, payload, state, priority, attempts, max_attempts,
       {schema}.finite_time(run_at), created_at,
       finished_at, leased_until, leased_by, last_error, errors, unique_key, result, metadata,
       timeout_seconds, attempted_at, updated_at, tenant, ordering_key
FROM {schema}.jobs
WHERE id = %s

-- name: list_jobs
-- Newest first; the next page starts below the last id seen.
SELECT id, kind, queue, payload, state, priority, attempts, max_attempts,
       {schema}.finite_time(run_at), created_at,
       finished_at, leased_until, leased_by, last_error, errors, unique_key, result, metadata,
       timeout_seconds, attempted_at, updated_at, tenant, ordering_key
FROM {schema}.jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s::{schema}.job_state)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(after_id)s::bigint IS NULL OR id < %(after_id)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: job_counts
SELECT queue, kind, state::text, jobs, oldest_runnable_age
FROM {schema}.job_counts
ORDER BY queue, kind, state

-- name: queue_depth
-- For metrics, per queue and kind: runnable, scheduled and running jobs, and the oldest
-- runnable one's age. The WHERE names the predicates of the partial indexes of pending jobs
-- (jobs_ready_idx, jobs_tenant_idx) and of running ones (jobs_running_kind_idx), ORed, so that the
-- planner combines them in a BitmapOr: finished rows, usually nearly all of the table, are never
-- read. `state IN (...)` gives a seq scan.
SELECT queue, kind,
       count(*) FILTER (WHERE state = 'pending' AND run_at <= now()) AS available,
       count(*) FILTER (WHERE state = 'pending' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       extract(epoch FROM now() - min({schema}.finite_time(run_at)) FILTER (WHERE state = 'pending' AND run_at <= now()))
           ::float8 AS oldest_available_age
FROM {schema}.jobs
WHERE (state = 'pending' AND tenant IS NULL) OR (state = 'pending' AND tenant IS NOT NULL)
   OR state = 'running'
GROUP BY queue, kind
