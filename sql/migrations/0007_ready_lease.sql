-- 0007: a lease that goes straight to the kinds and queues a runner serves, cheaper row versions,
-- and pruning that walks an id range instead of the table.
--
-- - The lease index becomes jobs_ready_idx (kind, queue, priority DESC, run_at, id), pending jobs
--   of no tenant. ready_groups() finds, with one index probe each, the (kind, queue, priority)
--   groups that hold pending jobs of the served kinds and queues; each group's runnable jobs
--   are a range of the index in (run_at, id) order, so a lease reads neither the jobs of kinds
--   or queues it does not serve nor those scheduled for later, and merges the groups' heads
--   back into the global lease order (priority DESC, run_at, id).
-- - The running index is keyed by kind, not leased_until: a heartbeat then changes no indexed
--   column, and with room left on each page (fillfactor) it is a HOT update. The rescuer reads
--   the running jobs (at most every runner's concurrency) and checks their leases.
-- - The kind and queue CHECKs bounded the length inside the regular expression (a repeat of 0
--   to 63), which Postgres expands into 63 copies; and it evaluates a table's CHECKs on every
--   row version, so every lease and every outcome paid for two such expressions (~8 µs a row).
--   The same rule is now a length test and an unbounded expression (~1 µs).
-- - lease_state.pruned_at: one runner prunes a round, and says when.
--
-- Safe on a live table: the new CHECKs are NOT VALID (validated after the transaction, under a
-- lock that lets writes through); the indexes are built and dropped CONCURRENTLY.
SET LOCAL lock_timeout = '5s';

ALTER TABLE {schema}.jobs SET (fillfactor = 90);

ALTER TABLE {schema}.jobs
    DROP CONSTRAINT IF EXISTS jobs_kind_check,
    DROP CONSTRAINT IF EXISTS jobs_queue_check,
    ADD CONSTRAINT jobs_kind_is_a_name
        CHECK (octet_length(kind) <= 64 AND kind ~ '^[a-z0-9][a-z0-9._-]*$') NOT VALID,
    ADD CONSTRAINT jobs_queue_is_a_name
        CHECK (octet_length(queue) <= 64 AND queue ~ '^[a-z0-9][a-z0-9._-]*$') NOT VALID;

ALTER TABLE {schema}.lease_state ADD COLUMN pruned_at timestamptz;

-- The (kind, queue, priority) groups holding pending jobs of no tenant, for these kinds and
-- queues (NULL: every queue): a skip scan of jobs_ready_idx, one probe a group and one more for
-- each kind and queue. A group's jobs may all be due later: reading its runnable range then
-- costs one more probe.
CREATE FUNCTION {schema}.ready_groups(kinds text[], queues text[])
RETURNS TABLE (kind text, queue text, priority smallint)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    served text[] := array(SELECT DISTINCT unnest(queues));  -- {{}} for NULL: then every queue
    k text;
    q text;
    qi integer;
    p smallint;
    below integer;
BEGIN
    FOREACH k IN ARRAY array(SELECT DISTINCT unnest(kinds)) LOOP
        q := '';  -- sorts before every name
        qi := 0;
        LOOP
            IF queues IS NULL THEN
                q := (SELECT j.queue FROM {schema}.jobs j
                      WHERE j.state = 'pending' AND j.tenant IS NULL AND j.kind = k AND j.queue > q
                      ORDER BY j.queue LIMIT 1);
            ELSE
                qi := qi + 1;
                q := served[qi];
            END IF;
            EXIT WHEN q IS NULL;
            below := 32767;
            LOOP
                p := (SELECT j.priority FROM {schema}.jobs j
                      WHERE j.state = 'pending' AND j.tenant IS NULL AND j.kind = k AND j.queue = q
                        AND j.priority <= below
                      ORDER BY j.priority DESC LIMIT 1);
                EXIT WHEN p IS NULL;
                kind := k;
                queue := q;
                priority := p;
                RETURN NEXT;
                below := p - 1;
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;

-- The next max_jobs runnable jobs of these groups in lease order, unlocked: the head of each
-- group's range, merged. keyed: also the heads of ordering keys (the fair lease); otherwise jobs
-- with an ordering key are left out (the plain lease runs only when there are none).
CREATE FUNCTION {schema}.ready_jobs(
    kinds text[], queues text[], priorities smallint[], max_jobs integer, keyed boolean
) RETURNS TABLE (id bigint, kind text, queue text, priority smallint, run_at timestamptz)
LANGUAGE sql STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
    SELECT c.id, g.kind, g.queue, g.priority, c.run_at
    FROM unnest(kinds, queues, priorities) AS g (kind, queue, priority)
    CROSS JOIN LATERAL (
        SELECT j.id, j.run_at FROM {schema}.jobs j
        WHERE j.state = 'pending' AND j.tenant IS NULL
          AND j.kind = g.kind AND j.queue = g.queue AND j.priority = g.priority
          AND j.run_at <= now()
          AND (j.ordering_key IS NULL OR (keyed AND NOT EXISTS (
              SELECT FROM {schema}.jobs o
              WHERE o.ordering_key = j.ordering_key AND o.id < j.id
                AND o.state IN ('pending', 'running'))))
        ORDER BY j.run_at, j.id
        LIMIT max_jobs
    ) c
    ORDER BY g.priority DESC, c.run_at, c.id
    LIMIT max_jobs
$$;

-- The fair lease of 0005, its jobs of no tenant now read through ready_groups and ready_jobs.
CREATE OR REPLACE FUNCTION {schema}.lease_fair(
    kinds text[], queues text[], max_jobs integer, lease_seconds double precision, runner text
) RETURNS TABLE (
    id bigint, kind text, queue text, payload jsonb, priority smallint, attempts integer,
    max_attempts integer, run_at timestamptz, created_at timestamptz, unique_key text,
    metadata jsonb, timeout_seconds double precision, tenant text, ordering_key text
)
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off  -- compiling would take longer than the statement (disabled scans inflate its cost)
AS $$
#variable_conflict use_column
DECLARE
    full_kinds text[];
    room_kinds text[];
    room_left bigint[];
    untenanted boolean;
    cursor_at text;
    visit integer := 2 * max_jobs + 10;  -- tenants visited a lease: the cost follows the batch
    gk text[];  -- the groups of jobs of no tenant (ready_groups)
    gq text[];
    gp smallint[];
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('outbox.lease.{schema}'));

    -- What each limited kind has room for: running slots and whole tokens.
    SELECT coalesce(array_agg(k.name) FILTER (WHERE k.room <= 0), '{{}}'),
           coalesce(array_agg(k.name) FILTER (WHERE k.room > 0), '{{}}'),
           coalesce(array_agg(k.room) FILTER (WHERE k.room > 0), '{{}}')
    INTO full_kinds, room_kinds, room_left
    FROM (
        SELECT l.name, least(
                   l.max_running - (SELECT count(*) FROM {schema}.jobs r
                                    WHERE r.state = 'running' AND r.kind = l.name),
                   floor(least(l.rate, coalesce(b.tokens, l.rate)
                         + extract(epoch FROM now() - b.refilled_at) * l.rate / l.per_seconds))
               )::bigint AS room
        FROM {schema}.limits l
        LEFT JOIN {schema}.buckets b ON b.scope = 'kind' AND b.name = l.name
        WHERE l.scope = 'kind' AND l.name = ANY(kinds)
    ) k
    WHERE k.room IS NOT NULL;

    untenanted := EXISTS (SELECT FROM {schema}.jobs u WHERE u.state = 'pending' AND u.tenant IS NULL);
    IF untenanted THEN
        SELECT array_agg(g.kind), array_agg(g.queue), array_agg(g.priority) INTO gk, gq, gp
        FROM {schema}.ready_groups(array(SELECT unnest(kinds) EXCEPT SELECT unnest(full_kinds)), queues) g;
    END IF;
    SELECT c.tenant_cursor INTO cursor_at FROM {schema}.lease_state c;

    RETURN QUERY
    WITH RECURSIVE after(tenant, pos) AS (  -- tenants after the cursor, in name order
        (SELECT t.tenant, 1 FROM {schema}.jobs t
         WHERE t.state = 'pending' AND t.tenant IS NOT NULL AND t.tenant > cursor_at
         ORDER BY t.tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT t.tenant FROM {schema}.jobs t
                WHERE t.state = 'pending' AND t.tenant IS NOT NULL AND t.tenant > s.tenant
                ORDER BY t.tenant LIMIT 1), s.pos + 1
        FROM after s WHERE s.tenant IS NOT NULL AND s.pos < visit
    ),
    after_count AS (SELECT count(a.tenant) AS n FROM after a),
    wrapped(tenant, pos) AS (  -- then from the first tenant up to the cursor, within the budget
        (SELECT t.tenant, (SELECT c.n FROM after_count c) + 1 FROM {schema}.jobs t
         WHERE t.state = 'pending' AND t.tenant IS NOT NULL AND t.tenant <= cursor_at
           AND (SELECT c.n FROM after_count c) < visit
         ORDER BY t.tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT t.tenant FROM {schema}.jobs t
                WHERE t.state = 'pending' AND t.tenant IS NOT NULL AND t.tenant > s.tenant
                  AND t.tenant <= cursor_at
                ORDER BY t.tenant LIMIT 1), s.pos + 1
        FROM wrapped s WHERE s.tenant IS NOT NULL AND s.pos < visit
    ),
    tenants AS (
        SELECT a.tenant, a.pos FROM after a WHERE a.tenant IS NOT NULL
        UNION ALL
        SELECT w.tenant, w.pos FROM wrapped w WHERE w.tenant IS NOT NULL
    ),
    tenant_running AS (
        SELECT r.tenant, count(*) AS n FROM {schema}.jobs r
        WHERE r.state = 'running' AND r.tenant IS NOT NULL
          AND EXISTS (SELECT FROM {schema}.limits l WHERE l.scope = 'tenant' AND l.max_running IS NOT NULL)
        GROUP BY r.tenant
    ),
    tenant_limits AS (
        SELECT s.tenant, s.pos,
               coalesce(own.weight, every.weight, 1) AS weight,
               coalesce(own.max_running, every.max_running) AS max_running,
               coalesce(own.rate, every.rate) AS rate,
               coalesce(own.per_seconds, every.per_seconds) AS per_seconds
        FROM tenants s
        LEFT JOIN {schema}.limits own ON own.scope = 'tenant' AND own.name = s.tenant
        LEFT JOIN {schema}.limits every ON every.scope = 'tenant' AND every.name = '*'
    ),
    groups AS (
        SELECT t.tenant, t.pos::numeric AS pos, t.weight, t.rate, t.per_seconds, least(
                   t.max_running - coalesce(r.n, 0),
                   floor(least(t.rate, coalesce(b.tokens, t.rate)
                         + extract(epoch FROM now() - b.refilled_at) * t.rate / t.per_seconds))
               )::bigint AS room
        FROM tenant_limits t
        LEFT JOIN tenant_running r ON r.tenant = t.tenant
        LEFT JOIN {schema}.buckets b ON b.scope = 'tenant' AND b.name = t.tenant
        UNION ALL  -- the jobs of no tenant: a tenant named '' at the wrap (when the scan gets there)
        SELECT NULL, (SELECT c.n FROM after_count c) + 0.5, 1, NULL, NULL, NULL
        WHERE untenanted AND (SELECT c.n FROM after_count c) < visit
    ),
    shares AS (
        SELECT g.*, least(max_jobs, g.room, greatest(1, ceil(2.0 * max_jobs * g.weight
                                                          / sum(g.weight) OVER ())))::int AS share
        FROM groups g
        WHERE g.room IS NULL OR g.room > 0
    ),
    offered AS (
        SELECT c.id, c.kind, c.priority, c.run_at, s.tenant, s.pos,
               ceil(row_number() OVER (PARTITION BY s.tenant ORDER BY c.priority DESC, c.run_at, c.id)
                    / s.weight::numeric) AS round
        FROM shares s
        CROSS JOIN LATERAL (
            (SELECT r.id, r.kind, r.priority, r.run_at
             FROM {schema}.ready_jobs(gk, gq, gp, s.share, true) r
             WHERE s.tenant IS NULL)
            UNION ALL
            (SELECT j.id, j.kind, j.priority, j.run_at FROM {schema}.jobs j
             WHERE j.state = 'pending' AND j.tenant = s.tenant
               AND j.run_at <= now() AND j.kind = ANY(kinds) AND j.kind <> ALL(full_kinds)
               AND (queues IS NULL OR j.queue = ANY(queues))
               AND (j.ordering_key IS NULL OR NOT EXISTS (
                   SELECT FROM {schema}.jobs o
                   WHERE o.ordering_key = j.ordering_key AND o.id < j.id
                     AND o.state IN ('pending', 'running')))
             ORDER BY j.priority DESC, j.run_at, j.id
             LIMIT s.share)
        ) c
    ),
    within_kind_room AS (
        SELECT o.*, row_number() OVER (PARTITION BY o.kind ORDER BY o.round, o.pos, o.priority DESC,
                                                                    o.run_at, o.id) AS kind_rank
        FROM offered o
    ),
    picked AS (
        SELECT w.id, w.tenant, w.pos, w.round FROM within_kind_room w
        WHERE NOT w.kind = ANY(room_kinds)
           OR w.kind_rank <= room_left[array_position(room_kinds, w.kind)]
        ORDER BY w.round, w.pos, w.priority DESC, w.run_at, w.id
        LIMIT max_jobs
    ),
    moved AS (  -- the next lease starts after the last tenant served (or visited: none was cut off)
        UPDATE {schema}.lease_state SET tenant_cursor = CASE
            WHEN (SELECT count(*) FROM picked) >= max_jobs
            THEN (SELECT coalesce(p.tenant, '') FROM picked p ORDER BY p.round DESC, p.pos DESC LIMIT 1)
            ELSE coalesce((SELECT t.tenant FROM tenants t ORDER BY t.pos DESC LIMIT 1), tenant_cursor)
        END
        WHERE one = true
    ),
    locked AS (
        SELECT j.id FROM {schema}.jobs j
        WHERE j.id IN (SELECT p.id FROM picked p) AND j.state = 'pending'
        FOR UPDATE OF j SKIP LOCKED
    ),
    leased AS (
        UPDATE {schema}.jobs j
        SET state = 'running',
            attempts = j.attempts + 1,
            leased_until = now() + make_interval(secs => lease_seconds),
            leased_by = runner,
            attempted_at = now(),
            updated_at = now()
        FROM locked
        WHERE j.id = locked.id
        RETURNING j.id, j.kind, j.queue, j.payload, j.priority, j.attempts, j.max_attempts,
                  {schema}.finite_time(j.run_at), j.created_at, j.unique_key, j.metadata,
                  j.timeout_seconds, j.tenant, j.ordering_key
    ),
    spent AS (  -- take a token for each start under a rate limit
        INSERT INTO {schema}.buckets AS b (scope, name, tokens, refilled_at)
        SELECT x.scope, x.name,
               least(x.rate, coalesce(old.tokens, x.rate)
                     + coalesce(extract(epoch FROM now() - old.refilled_at), 0) * x.rate / x.per_seconds)
               - x.taken,
               now()
        FROM (
            SELECT 'kind' AS scope, l.kind AS name, count(*) AS taken, lim.rate, lim.per_seconds
            FROM leased l JOIN {schema}.limits lim ON lim.scope = 'kind' AND lim.name = l.kind
            WHERE lim.rate IS NOT NULL
            GROUP BY l.kind, lim.rate, lim.per_seconds
            UNION ALL
            SELECT 'tenant', l.tenant, count(*), g.rate, g.per_seconds
            FROM leased l JOIN groups g ON g.tenant = l.tenant
            WHERE g.rate IS NOT NULL
            GROUP BY l.tenant, g.rate, g.per_seconds
        ) x
        LEFT JOIN {schema}.buckets old ON old.scope = x.scope AND old.name = x.name
        ON CONFLICT (scope, name) DO UPDATE SET tokens = excluded.tokens, refilled_at = excluded.refilled_at
    )
    SELECT * FROM leased;
END
$$;

-- The lease. When no limit is set and no pending job has a tenant or an ordering key: the groups
-- of the served kinds and queues, how many of the next max_jobs in lease order each holds, and
-- that many taken from each group's range with SKIP LOCKED (a job another runner holds is passed
-- over for the next one of its group). Otherwise lease_fair.
CREATE OR REPLACE FUNCTION {schema}.lease(
    kinds text[], queues text[], max_jobs integer, lease_seconds double precision, runner text
) RETURNS TABLE (
    id bigint, kind text, queue text, payload jsonb, priority smallint, attempts integer,
    max_attempts integer, run_at timestamptz, created_at timestamptz, unique_key text,
    metadata jsonb, timeout_seconds double precision, tenant text, ordering_key text
)
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off  -- compiling would take longer than the statement (disabled scans inflate its cost)
AS $$
#variable_conflict use_column
DECLARE
    gk text[];
    gq text[];
    gp smallint[];
    gn integer[];
BEGIN
    IF EXISTS (SELECT FROM {schema}.limits)
       OR EXISTS (SELECT FROM {schema}.jobs f WHERE f.state = 'pending' AND f.tenant IS NOT NULL)
       OR EXISTS (SELECT FROM {schema}.jobs f
                  WHERE f.state = 'pending' AND f.ordering_key IS NOT NULL) THEN
        RETURN QUERY SELECT * FROM {schema}.lease_fair(kinds, queues, max_jobs, lease_seconds, runner);
        RETURN;
    END IF;
    SELECT array_agg(g.kind), array_agg(g.queue), array_agg(g.priority) INTO gk, gq, gp
    FROM {schema}.ready_groups(kinds, queues) g;
    IF gk IS NULL THEN
        RETURN;
    ELSIF cardinality(gk) = 1 THEN
        gn := ARRAY[max_jobs];
    ELSE
        SELECT array_agg(coalesce(t.take, 0)::integer ORDER BY g.n) INTO gn
        FROM unnest(gk, gq, gp) WITH ORDINALITY AS g (kind, queue, priority, n)
        LEFT JOIN (SELECT r.kind, r.queue, r.priority, count(*) AS take
                   FROM {schema}.ready_jobs(gk, gq, gp, max_jobs, false) r
                   GROUP BY r.kind, r.queue, r.priority) t
            ON t.kind = g.kind AND t.queue = g.queue AND t.priority = g.priority;
    END IF;
    -- Tenant and key are tested again: such a job may have committed since the probes above.
    RETURN QUERY
    WITH next AS (
        SELECT c.id
        FROM unnest(gk, gq, gp, gn) AS g (kind, queue, priority, take)
        CROSS JOIN LATERAL (
            SELECT j.id FROM {schema}.jobs j
            WHERE j.state = 'pending' AND j.tenant IS NULL AND j.ordering_key IS NULL
              AND j.kind = g.kind AND j.queue = g.queue AND j.priority = g.priority
              AND j.run_at <= now()
            ORDER BY j.run_at, j.id
            LIMIT g.take
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE g.take > 0
    )
    UPDATE {schema}.jobs j
    SET state = 'running',
        attempts = j.attempts + 1,
        leased_until = now() + make_interval(secs => lease_seconds),
        leased_by = runner,
        attempted_at = now(),
        updated_at = now()
    -- An array, not a join: the planner cannot know how few rows `next` holds, and would
    -- merge-join it with the whole primary key.
    WHERE j.id = ANY(array(SELECT n.id FROM next n))
    RETURNING j.id, j.kind, j.queue, j.payload, j.priority, j.attempts, j.max_attempts,
              {schema}.finite_time(j.run_at), j.created_at, j.unique_key, j.metadata,
              j.timeout_seconds, j.tenant, j.ordering_key;
END
$$;

-- outbox: concurrently
-- Each statement below runs on its own, outside a transaction, after the part above commits;
-- `migrate` runs them again until they have all succeeded (each is a no-op once done).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_ready_idx ON {schema}.jobs (kind, queue, priority DESC, run_at, id)
    WHERE state = 'pending' AND tenant IS NULL;
DROP INDEX CONCURRENTLY IF EXISTS {schema}.jobs_lease_idx;
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_running_kind_idx ON {schema}.jobs (kind) WHERE state = 'running';
DROP INDEX CONCURRENTLY IF EXISTS {schema}.jobs_running_idx;
ALTER TABLE {schema}.jobs VALIDATE CONSTRAINT jobs_kind_is_a_name;
ALTER TABLE {schema}.jobs VALIDATE CONSTRAINT jobs_queue_is_a_name;
