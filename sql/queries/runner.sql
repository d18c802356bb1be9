-- The runner's statements. A lease is (id, attempts, leased_by): every write after the lease
-- checks all three and state = 'running', so a runner that lost its lease never overwrites
-- the outcome another runner records.

-- name: lease
-- One statement (see lease and lease_fair in migration 0005): pick runnable jobs in lease
-- order, under the flow rules when any apply, skip those another runner is locking, mark them
-- running and spend an attempt.
SELECT * FROM {schema}.lease(
    %(kinds)s::text[], %(queues)s::text[], %(limit)s, %(lease_seconds)s, %(runner)s
)

-- name: record_outcomes
-- Outcomes of many attempts in one statement. state is the new state; delay the seconds to a
-- retry (pending only); error the bounded failure message (NULL on success).
UPDATE {schema}.jobs j
SET state = o.state::{schema}.job_state,
    run_at = CASE WHEN o.state = 'pending' THEN now() + make_interval(secs => o.delay) ELSE j.run_at END,
    finished_at = CASE WHEN o.state = 'pending' THEN NULL ELSE now() END,
    leased_until = NULL,
    updated_at = now(),
    result = CASE WHEN o.state = 'succeeded' THEN o.result::jsonb ELSE j.result END,
    last_error = coalesce(o.error, j.last_error),
    errors = CASE WHEN o.error IS NULL THEN j.errors ELSE jsonb_path_query_array(
        j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempts, 'at', now(), 'error', o.error)),
        '$[last - 9 to last]') END
FROM unnest(%(ids)b::bigint[], %(attempts)b::int4[], %(states)s::text[], %(delays)s::float8[],
            %(errors)s::text[], %(results)s::text[]) AS o (id, attempts, state, delay, error, result)
WHERE j.id = o.id
  AND j.attempts = o.attempts
  AND j.leased_by = %(runner)s
  AND j.state = 'running'
RETURNING j.id

-- name: complete_jobs
-- The common case of record_outcomes, leaner: plain successes without a result.
UPDATE {schema}.jobs j
SET state = 'succeeded', finished_at = now(), leased_until = NULL, updated_at = now()
FROM unnest(%(ids)b::bigint[], %(attempts)b::int4[]) AS o (id, attempts)
WHERE j.id = o.id
  AND j.attempts = o.attempts
  AND j.leased_by = %(runner)s
  AND j.state = 'running'
RETURNING j.id

-- name: heartbeat
-- Extend the leases this runner still holds, each named by (id, attempts): an attempt that
-- lost its lease never renews the next attempt's. The pairs not returned were lost or cancelled.
UPDATE {schema}.jobs j
SET leased_until = now() + make_interval(secs => %(lease_seconds)s)
FROM unnest(%(ids)b::bigint[], %(attempts)b::int4[]) AS h (id, attempts)
WHERE j.id = h.id AND j.attempts = h.attempts AND j.leased_by = %(runner)s
  AND j.state = 'running'
RETURNING j.id, j.attempts

-- name: release
-- Hand unfinished jobs back at shutdown without spending their attempt. Leases are (id,
-- attempts): two runners given one runner id never release each other's attempts.
UPDATE {schema}.jobs j
SET state = 'pending', attempts = j.attempts - 1, leased_until = NULL, run_at = now(),
    updated_at = now()
FROM unnest(%(ids)b::bigint[], %(attempts)b::int4[]) AS r (id, attempts)
WHERE j.id = r.id AND j.attempts = r.attempts AND j.leased_by = %(runner)s
  AND j.state = 'running'
RETURNING j.id

-- name: rescue
-- Jobs whose runner died: their lease expired. Retry them, or fail them when the crashed
-- attempt was their last. The rescuing runner passes the jobs it still holds (held): after an
-- outage their leases may have lapsed, but their handlers run and their outcomes are coming.
WITH expired AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'running' AND leased_until < now()
      AND NOT id = ANY(%(held)b::bigint[])
    ORDER BY leased_until
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.jobs j
SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'pending' END::{schema}.job_state,
    finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
    run_at = now(),
    leased_until = NULL,
    updated_at = now(),
    last_error = 'LeaseExpired: runner ' || coalesce(j.leased_by, '?') || ' stopped renewing its lease',
    errors = jsonb_path_query_array(
        j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempts, 'at', now(),
            'error', 'LeaseExpired: runner ' || coalesce(j.leased_by, '?') || ' stopped renewing its lease')),
        '$[last - 9 to last]')
FROM expired
WHERE j.id = expired.id
RETURNING j.id

-- name: claim_prune
-- One runner prunes a round: the first to ask once `every` seconds have passed since the last.
UPDATE {schema}.lease_state SET pruned_at = now()
WHERE one AND (pruned_at IS NULL OR pruned_at <= now() - make_interval(secs => %(every)s))
RETURNING true

-- name: prune
-- Delete the jobs finished more than `older_than` seconds ago among the next `limit` ids after
-- `after`, walking the primary key. Ids follow creation and a job finishes after it is created,
-- so once a window holds no job created before the cutoff, no later one can be old enough: the
-- walk ends there, without reading the rest of the table. Returns the rows deleted, the last id
-- of the window (NULL: none left) and whether to go on.
WITH win AS (
    SELECT id, created_at FROM {schema}.jobs
    WHERE id > %(after)s
    ORDER BY id
    LIMIT %(limit)s
),
gone AS (
    DELETE FROM {schema}.jobs j
    USING win
    WHERE j.id = win.id
      AND j.state IN ('succeeded', 'failed', 'discarded', 'cancelled')
      AND j.finished_at < now() - make_interval(secs => %(older_than)s)
    RETURNING j.id
)
SELECT (SELECT count(*) FROM gone)::integer,
       (SELECT max(w.id) FROM win w),
       coalesce((SELECT bool_or(w.created_at < now() - make_interval(secs => %(older_than)s))
                 FROM win w), false)

-- name: vacuum_stats
-- What the runner's vacuum rule reads (outbox/runner/vacuum.py): live and dead rows, seconds since
-- the last vacuum or autovacuum of the table ended (NULL: none since the stats were reset),
-- whether this role may vacuum it, and the role's and table's names for the log. Who may is
-- what VACUUM itself checks: the table's owner (or a member of the owning role), the database's
-- owner and, from PostgreSQL 17, whoever has MAINTAIN on it (pg_maintain's members among them);
-- superusers pass every check. Anyone else gets a WARNING and no vacuum. MAINTAIN is an unknown
-- privilege before 17: the CASE keeps it from being asked there.
SELECT s.n_live_tup,
       s.n_dead_tup,
       extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8,
       pg_has_role(c.relowner, 'USAGE')
           OR pg_has_role(d.datdba, 'USAGE')
           OR CASE WHEN current_setting('server_version_num')::integer >= 170000
                   THEN has_table_privilege(c.oid, 'MAINTAIN')
                   ELSE false END,
       quote_ident(current_user),
       s.relid::regclass::text
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
JOIN pg_database d ON d.datname = current_database()
WHERE s.relid = '{schema}.jobs'::regclass

-- name: vacuum_jobs
-- The runner's own vacuum, on an autocommit connection (VACUUM cannot run in a transaction).
-- Plain, never FULL (that rewrites the table under a lock that stops every runner). SKIP_LOCKED:
-- when another vacuum (autovacuum) holds the table, skip it at once with a WARNING (55P03) instead
-- of queueing behind it. TRUNCATE false: handing the empty pages at the end back to the OS takes
-- an ACCESS EXCLUSIVE lock, which would stall every lease while it lasts, and new jobs fill those
-- pages again soon; autovacuum still truncates. INDEX_CLEANUP stays AUTO: vacuuming the indexes
-- is what frees their pages, and AUTO skips it only when almost no heap page has dead rows.
VACUUM (SKIP_LOCKED, TRUNCATE false) {schema}.jobs

-- name: seconds_until_due
-- For one-shot runs: how long until the earliest pending job of these kinds (and queues) is
-- due, in seconds (negative: due already); NULL when none is pending.
SELECT extract(epoch FROM min({schema}.finite_time(run_at)) - now())::float8
FROM {schema}.jobs
WHERE ((state = 'pending' AND tenant IS NULL) OR (state = 'pending' AND tenant IS NOT NULL))
  AND kind = ANY(%(kinds)s::text[])
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))

-- name: listen
LISTEN {channel}

-- name: listen_for
-- This runner waits for work: enqueues notify for the next `seconds` (migration 0008).
SELECT {schema}.listen_for(%(seconds)s)
