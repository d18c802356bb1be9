-- Enqueue on the caller's connection. "now" is always the database's clock.

-- name: insert_job
INSERT INTO {schema}.jobs (kind, queue, payload, priority, max_attempts, run_at, unique_key, metadata,
                          timeout_seconds, tenant, ordering_key)
VALUES (%s, %s, %s::jsonb, %s, %s, coalesce(%s::timestamptz, now() + make_interval(secs => %s::float8)), %s,
        %s::jsonb, %s::float8, %s, %s)
ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')
DO NOTHING
RETURNING id

-- name: insert_job_without_key
-- The same without a unique_key: no ON CONFLICT, whose speculative insertion costs every row a
-- confirmation record in the WAL even when no unique index applies to it.
INSERT INTO {schema}.jobs (kind, queue, payload, priority, max_attempts, run_at, metadata,
                          timeout_seconds, tenant, ordering_key)
VALUES (%s, %s, %s::jsonb, %s, %s, coalesce(%s::timestamptz, now() + make_interval(secs => %s::float8)),
        %s::jsonb, %s::float8, %s, %s)
RETURNING id

-- name: live_job_by_unique_key
SELECT id FROM {schema}.jobs
WHERE kind = %s AND unique_key = %s AND state IN ('pending', 'running')

-- name: insert_jobs
-- Many jobs with unique keys, each with an id reserved for it (so that every input keeps its
-- place); a job whose (kind, unique_key) matches a live job is not inserted.
INSERT INTO {schema}.jobs (id, kind, queue, payload, priority, max_attempts, run_at, unique_key,
                          metadata, timeout_seconds, tenant, ordering_key)
SELECT i, k, q, p::jsonb, pr, ma, coalesce(ra, now() + make_interval(secs => d)), uk, m::jsonb, ts, tn, ok
FROM unnest(%b::int8[], %s::text[], %s::text[], %s::text[], %s::int2[], %s::int4[], %s::timestamptz[],
            %s::float8[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::text[])
     AS t (i, k, q, p, pr, ma, ra, d, uk, m, ts, tn, ok)
ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')
DO NOTHING
RETURNING id

-- name: live_jobs_by_unique_key
SELECT j.kind, j.unique_key, j.id FROM {schema}.jobs j
JOIN unnest(%s::text[], %s::text[]) AS w (kind, unique_key)
  ON j.kind = w.kind AND j.unique_key = w.unique_key
WHERE j.state IN ('pending', 'running')

-- name: reserve_job_ids
-- Ids for a COPY of n jobs, and "now" on the database's clock for their run_at. When the ids
-- are one unbroken range (no other session took one meanwhile), only its ends travel.
WITH ids AS (
    SELECT nextval((SELECT pg_get_serial_sequence('{schema}.jobs', 'id')::regclass)) AS id
    FROM generate_series(1, %s)
)
SELECT now(), min(id), max(id),
       CASE WHEN max(id) - min(id) + 1 = count(*) THEN NULL ELSE array_agg(id) END
FROM ids

-- name: copy_jobs
COPY {schema}.jobs (id, kind, queue, payload, priority, max_attempts, metadata, timeout_seconds, tenant,
                   ordering_key, run_at)
FROM STDIN

-- name: copy_jobs_now
-- Jobs that run now: run_at takes its default, the transaction's now().
COPY {schema}.jobs (id, kind, queue, payload, priority, max_attempts, metadata, timeout_seconds, tenant,
                   ordering_key)
FROM STDIN

-- name: enqueue_via_function
-- Through the SECURITY DEFINER function: for a role that may only enqueue (see migration 0006).
SELECT {schema}.enqueue(%s, %s::jsonb, %s::timestamptz, %s, %s, %s, %s, %s::float8, %s, %s,
                        %s::float8, %s::jsonb)

-- name: enqueue_many_via_function
-- The same for many jobs, in input order; a live duplicate's existing id comes back for it.
SELECT {schema}.enqueue(k, p::jsonb, ra, ma, pr, q, uk, ts, tn, ok, d, m::jsonb)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::int4[], %s::int4[], %s::timestamptz[],
            %s::float8[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::text[])
     WITH ORDINALITY AS t (k, q, p, pr, ma, ra, d, uk, m, ts, tn, ok, n)
ORDER BY n
