-- Live runners: each keeps its own row fresh; a row not refreshed for a while is a dead runner.

-- name: register_runner
INSERT INTO {schema}.runners AS r (id, host, pid, version, kinds, queues, concurrency, running)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(kinds)s::text[], %(queues)s::text[],
        %(concurrency)s, %(running)s)
ON CONFLICT (id) DO UPDATE
SET last_seen = now(), running = excluded.running, kinds = excluded.kinds,
    queues = excluded.queues, concurrency = excluded.concurrency

-- name: remove_runner
DELETE FROM {schema}.runners WHERE id = %(id)s

-- name: expire_runners
-- Rows of runners that stopped refreshing them (killed, lost): gone after %(stale)s seconds.
DELETE FROM {schema}.runners
WHERE last_seen < now() - make_interval(secs => %(stale)s)
RETURNING id

-- name: list_runners
-- The live ones: a row not refreshed for %(stale)s seconds is a dead runner's.
SELECT id, host, pid, version, kinds, queues, concurrency, started_at, last_seen, running,
       extract(epoch FROM now() - last_seen)::float8
FROM {schema}.runners
WHERE last_seen >= now() - make_interval(secs => %(stale)s)
ORDER BY started_at, id

-- name: unhandled_kinds
-- Runnable pending jobs of a kind (in a queue) that no live runner serves: a typo in a kind,
-- or a deploy that forgot a handler. One pass over the pending jobs.
SELECT j.kind, count(*), extract(epoch FROM now() - min({schema}.finite_time(j.run_at)))::float8
FROM {schema}.jobs j
WHERE ((j.state = 'pending' AND j.tenant IS NULL) OR (j.state = 'pending' AND j.tenant IS NOT NULL))
  AND j.run_at <= now()
  AND NOT EXISTS (
      SELECT FROM {schema}.runners r
      WHERE r.last_seen >= now() - make_interval(secs => %(stale)s)
        AND j.kind = ANY(r.kinds)
        AND (r.queues IS NULL OR j.queue = ANY(r.queues)))
GROUP BY j.kind
ORDER BY count(*) DESC, j.kind
LIMIT 100
