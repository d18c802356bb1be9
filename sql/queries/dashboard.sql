-- The dashboard's overview: every count comes from an index, however many finished jobs the
-- table holds. Live jobs through the partial indexes of pending and running jobs (the OR lets
-- the planner combine them), problems through jobs_problem_idx. Succeeded jobs, nearly all of a
-- busy table, are not counted: the table's row estimate stands in for them.

-- name: overview
SELECT queue, kind,
       CASE WHEN state = 'pending' AND run_at > now() THEN 'scheduled' ELSE state::text END,
       count(*),
       extract(epoch FROM now() - min({schema}.finite_time(run_at)) FILTER (WHERE state = 'pending' AND run_at <= now()))::float8
FROM {schema}.jobs
WHERE (state = 'pending' AND tenant IS NULL) OR (state = 'pending' AND tenant IS NOT NULL)
   OR state = 'running'
GROUP BY 1, 2, 3
UNION ALL
SELECT queue, kind, state::text, count(*), NULL
FROM {schema}.jobs
WHERE state IN ('failed', 'discarded', 'cancelled')
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3

-- name: estimated_rows
-- The planner's estimate of the table's rows (-1 before the first ANALYZE).
SELECT c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = 'jobs'
