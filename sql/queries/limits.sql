-- Flow limits per kind and tenant (the limits table of migration 0005), and the keys that wait.

-- name: set_limit
-- Replace the limit of (scope, name): what is not given is no longer limited.
INSERT INTO {schema}.limits AS l (scope, name, max_running, rate, per_seconds, weight, updated_at)
VALUES (%(scope)s, %(name)s, %(max_running)s, %(rate)s, %(per_seconds)s, %(weight)s, now())
ON CONFLICT (scope, name) DO UPDATE
SET max_running = excluded.max_running, rate = excluded.rate, per_seconds = excluded.per_seconds,
    weight = excluded.weight, updated_at = now()

-- name: remove_limit
WITH gone AS (
    DELETE FROM {schema}.limits WHERE scope = %(scope)s AND name = %(name)s RETURNING scope, name
), buckets AS (
    DELETE FROM {schema}.buckets b USING gone WHERE b.scope = gone.scope AND b.name = gone.name
)
SELECT count(*) FROM gone

-- name: list_limits
-- Every limit with what it holds back now: jobs running, whole tokens left (a full bucket when
-- none was spent yet), and runnable jobs waiting. A tenant limit named * applies to each tenant
-- without one of its own: its counts are summed over those tenants.
SELECT l.scope, l.name, l.max_running, l.rate, l.per_seconds, l.weight,
       (SELECT count(*) FROM {schema}.jobs r
        WHERE r.state = 'running'
          AND CASE WHEN l.scope = 'kind' THEN r.kind = l.name
                   WHEN l.name = '*' THEN r.tenant IS NOT NULL AND NOT EXISTS (
                       SELECT FROM {schema}.limits o WHERE o.scope = 'tenant' AND o.name = r.tenant)
                   ELSE r.tenant = l.name END) AS running,
       CASE WHEN l.rate IS NULL OR l.name = '*' THEN NULL
            ELSE floor(least(l.rate, coalesce(b.tokens, l.rate)
                 + coalesce(extract(epoch FROM now() - b.refilled_at), 0) * l.rate / l.per_seconds))::bigint
       END AS tokens,
       (SELECT count(*) FROM {schema}.jobs p
        WHERE ((p.state = 'pending' AND p.tenant IS NULL) OR (p.state = 'pending' AND p.tenant IS NOT NULL))
          AND p.run_at <= now()
          AND CASE WHEN l.scope = 'kind' THEN p.kind = l.name
                   WHEN l.name = '*' THEN p.tenant IS NOT NULL AND NOT EXISTS (
                       SELECT FROM {schema}.limits o WHERE o.scope = 'tenant' AND o.name = p.tenant)
                   ELSE p.tenant = l.name END) AS waiting
FROM {schema}.limits l
LEFT JOIN {schema}.buckets b ON b.scope = l.scope AND b.name = l.name
ORDER BY l.scope, l.name

-- name: blocked_keys
-- Keys whose head failed an attempt and waits for its retry: the jobs behind it wait too.
SELECT ordering_key, head_id, kind, tenant, state::text, attempts, run_at, last_error, waiting
FROM {schema}.blocked_keys
WHERE state = 'pending' AND attempts > 0 AND waiting > 0
ORDER BY run_at, ordering_key
LIMIT %(limit)s
