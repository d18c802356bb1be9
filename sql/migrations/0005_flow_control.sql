-- 0005: flow control. Tenants (leases take them round-robin), ordering keys (one job of a key
-- at a time, in enqueue order), and limits per kind and per tenant (jobs running at once across
-- every runner, starts per period). And bounded time: run_at must fall in [1970, 9000).
--
-- Safe on a live table: the new columns are nullable without a default (a catalog change); their
-- CHECKs are NOT VALID, since every existing row holds NULL there (new rows are checked); the new
-- indexes are built CONCURRENTLY after this transaction commits (the part after the marker).
SET LOCAL lock_timeout = '5s';

ALTER TABLE {schema}.jobs
    ADD COLUMN tenant text,
    ADD COLUMN ordering_key text;
ALTER TABLE {schema}.jobs
    ADD CONSTRAINT jobs_tenant_check
        CHECK (octet_length(tenant) BETWEEN 1 AND 128 AND tenant !~ '[[:cntrl:]]') NOT VALID,
    ADD CONSTRAINT jobs_ordering_key_check
        CHECK (octet_length(ordering_key) BETWEEN 1 AND 512 AND ordering_key !~ '[[:cntrl:]]') NOT VALID;
-- A run_at of -infinity, or past year 9999, broke every reader (Python has no such datetime, and
-- Postgres cannot subtract infinite timestamps). New rows are bounded; rows already there are
-- read through finite_time() by every query that does arithmetic on run_at or returns it.
ALTER TABLE {schema}.jobs
    ADD CONSTRAINT jobs_run_at_bounded
        CHECK (run_at >= '1970-01-01 00:00:00+00' AND run_at < '9000-01-01 00:00:00+00') NOT VALID;

CREATE FUNCTION {schema}.finite_time(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT least(greatest(t, '1970-01-01 00:00:00+00'::timestamptz), '9000-01-01 00:00:00+00'::timestamptz) $$;
COMMENT ON FUNCTION {schema}.finite_time IS 'A timestamp clamped into [1970, 9000]: what readers show of run_at.';

COMMENT ON COLUMN {schema}.jobs.tenant IS
    'Whose job it is; leases take tenants round-robin. NULL: the jobs of no tenant, one group of their own.';
COMMENT ON COLUMN {schema}.jobs.ordering_key IS
    'Jobs with one key run one at a time, in enqueue (id) order, across every runner.';

-- Limits, read by every runner's lease: runners with different code agree.
CREATE TABLE {schema}.limits (
    scope        text NOT NULL CHECK (scope IN ('kind', 'tenant')),
    name         text NOT NULL CHECK (octet_length(name) BETWEEN 1 AND 128),
    max_running  integer CHECK (max_running >= 1),
    rate         integer CHECK (rate >= 1),
    per_seconds  double precision CHECK (per_seconds > 0 AND per_seconds <= 86400),
    weight       integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, name),
    CHECK ((rate IS NULL) = (per_seconds IS NULL))
);
COMMENT ON TABLE {schema}.limits IS
    'Flow limits: per kind or tenant (name * is every tenant without a row of its own), at most '
    'max_running jobs running at once, at most rate starts per per_seconds; weight: a tenant''s '
    'share of each lease.';

-- The token bucket of every rate limit in use: tokens refill at rate/per_seconds a second, up to rate.
CREATE TABLE {schema}.buckets (
    scope        text NOT NULL,
    name         text NOT NULL,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, name)
);

-- Where the fair lease's round-robin over tenants stopped: one row.
CREATE TABLE {schema}.lease_state (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    tenant_cursor  text NOT NULL DEFAULT ''
);
INSERT INTO {schema}.lease_state DEFAULT VALUES;

-- The fair lease: every rule, under a lock that makes one fair lease at a time per schema, so the
-- counts it reads (jobs running, tokens left, the head of each key) are what earlier leases
-- committed. Rows are locked with SKIP LOCKED last, against a concurrent plain lease, an operator's
-- cancel or the rescuer.
--
-- Groups are tenants with pending jobs, taken round-robin: a skip scan over jobs_tenant_idx (one
-- probe a tenant) visits at most 2 × max_jobs + 10 of them, in name order from where the previous
-- lease stopped, wrapping around; the jobs of no tenant are one more group, met at the wrap. Each
-- group offers its next runnable jobs in lease order; a job's round is its rank in its group
-- divided by the group's weight; the lease takes rounds in order, and within a round the groups in
-- visiting order. A tenant's wait therefore depends on how many tenants are active, not on how
-- many jobs another one has queued, and a lease's cost on its batch, not on the tenant count.
CREATE FUNCTION {schema}.lease_fair(
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
            (SELECT j.id, j.kind, j.priority, j.run_at FROM {schema}.jobs j
             WHERE s.tenant IS NULL AND j.state = 'pending' AND j.tenant IS NULL
               AND j.run_at <= now() AND j.kind = ANY(kinds) AND j.kind <> ALL(full_kinds)
               AND (queues IS NULL OR j.queue = ANY(queues))
               AND (j.ordering_key IS NULL OR NOT EXISTS (
                   SELECT FROM {schema}.jobs o
                   WHERE o.ordering_key = j.ordering_key AND o.id < j.id
                     AND o.state IN ('pending', 'running')))
             ORDER BY j.priority DESC, j.run_at, j.id
             LIMIT s.share)
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

-- The lease. When no limit is set and no pending job has a tenant or an ordering key, it is the
-- plain lease of 0003 (two probes of empty indexes more); otherwise lease_fair.
CREATE FUNCTION {schema}.lease(
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
BEGIN
    IF EXISTS (SELECT FROM {schema}.limits)
       OR EXISTS (SELECT FROM {schema}.jobs f WHERE f.state = 'pending' AND f.tenant IS NOT NULL)
       OR EXISTS (SELECT FROM {schema}.jobs f
                  WHERE f.state = 'pending' AND f.ordering_key IS NOT NULL) THEN
        RETURN QUERY SELECT * FROM {schema}.lease_fair(kinds, queues, max_jobs, lease_seconds, runner);
        RETURN;
    END IF;
    -- Tenant and key are tested again: such a job may have committed since the probes above.
    RETURN QUERY
    WITH next AS (
        SELECT j.id FROM {schema}.jobs j
        WHERE j.state = 'pending' AND j.tenant IS NULL AND j.ordering_key IS NULL
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
        leased_by = runner,
        attempted_at = now(),
        updated_at = now()
    FROM next
    WHERE j.id = next.id
    RETURNING j.id, j.kind, j.queue, j.payload, j.priority, j.attempts, j.max_attempts,
              {schema}.finite_time(j.run_at), j.created_at, j.unique_key, j.metadata,
              j.timeout_seconds, j.tenant, j.ordering_key;
END
$$;

-- lease_jobs keeps its 0003 shape for runners of the previous version during a rolling deploy;
-- they now lease under the same rules.
CREATE OR REPLACE FUNCTION {schema}.lease_jobs(
    kinds text[], queues text[], max_jobs integer, lease_seconds double precision, runner text
) RETURNS TABLE (
    id bigint, kind text, queue text, payload jsonb, priority smallint, attempts integer,
    max_attempts integer, run_at timestamptz, created_at timestamptz, unique_key text,
    metadata jsonb, timeout_seconds double precision
)
LANGUAGE sql
AS $$
    SELECT l.id, l.kind, l.queue, l.payload, l.priority, l.attempts, l.max_attempts, l.run_at,
           l.created_at, l.unique_key, l.metadata, l.timeout_seconds
    FROM {schema}.lease(kinds, queues, max_jobs, lease_seconds, runner) l
$$;

DROP FUNCTION {schema}.enqueue(text, jsonb, timestamptz, integer, integer, text, text, double precision);
-- enqueue from SQL (triggers, other languages): the same rules as the Python enqueue, now with
-- tenant, ordering_key, delay (seconds after now; not with run_at) and metadata (outbox's own
-- facts about the job, such as the trace context: Python passes it when it enqueues through here).
-- The payload limit is the setting outbox.max_payload_bytes, 1 MiB when unset.
CREATE FUNCTION {schema}.enqueue(
    kind         text,
    payload      jsonb DEFAULT '{{}}',
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT 20,
    priority     integer DEFAULT 0,
    queue        text DEFAULT 'default',
    unique_key   text DEFAULT NULL,
    timeout      double precision DEFAULT NULL,
    tenant       text DEFAULT NULL,
    ordering_key text DEFAULT NULL,
    delay        double precision DEFAULT NULL,
    metadata     jsonb DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k text := lower(btrim(enqueue.kind));
    q text := lower(btrim(enqueue.queue));
    body jsonb := coalesce(enqueue.payload, '{{}}');
    lim bigint := coalesce(nullif(current_setting('outbox.max_payload_bytes', true), '')::bigint, 1048576);
    new_id bigint;
BEGIN
    IF k IS NULL OR k !~ '^[a-z0-9][a-z0-9._-]{{0,63}}$' THEN
        RAISE EXCEPTION 'outbox: invalid job kind %', quote_nullable(enqueue.kind)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A kind is 1 to 64 characters of a-z 0-9 . _ - starting with a letter or digit.';
    END IF;
    IF q IS NULL OR q !~ '^[a-z0-9][a-z0-9._-]{{0,63}}$' THEN
        RAISE EXCEPTION 'outbox: invalid queue name %', quote_nullable(enqueue.queue)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A queue name follows the same rules as a kind.';
    END IF;
    IF octet_length(body::text) > lim THEN
        RAISE EXCEPTION 'outbox: payload of % bytes is over the limit of % bytes', octet_length(body::text), lim
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Store large data elsewhere and enqueue a reference to it, or raise outbox.max_payload_bytes.';
    END IF;
    IF enqueue.max_attempts IS NULL OR enqueue.max_attempts < 1 THEN
        RAISE EXCEPTION 'outbox: max_attempts must be at least 1, got %', quote_nullable(enqueue.max_attempts)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.priority IS NULL OR enqueue.priority NOT BETWEEN -32768 AND 32767 THEN
        RAISE EXCEPTION 'outbox: priority must be between -32768 and 32767, got %', quote_nullable(enqueue.priority)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.unique_key = '' OR octet_length(enqueue.unique_key) > 512 THEN
        RAISE EXCEPTION 'outbox: unique_key must be 1 to 512 bytes, got % bytes', octet_length(enqueue.unique_key)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.timeout IS NOT NULL AND NOT (enqueue.timeout > 0 AND enqueue.timeout <= 604800) THEN
        RAISE EXCEPTION 'outbox: timeout must be more than 0 and at most 604800 seconds, got %', enqueue.timeout
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.delay IS NOT NULL AND (enqueue.run_at IS NOT NULL
                                      OR NOT (enqueue.delay >= 0 AND enqueue.delay <= 31557600000)) THEN
        RAISE EXCEPTION 'outbox: delay must be from 0 to 1000 years of seconds, without run_at, got %', enqueue.delay
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.run_at IS NOT NULL AND NOT (enqueue.run_at >= '1970-01-01 00:00:00+00'
                                           AND enqueue.run_at < '9000-01-01 00:00:00+00') THEN
        RAISE EXCEPTION 'outbox: run_at must be from 1970-01-01 to before 9000-01-01 (UTC), got %', enqueue.run_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.tenant IS NOT NULL AND NOT (octet_length(enqueue.tenant) BETWEEN 1 AND 128
                                           AND enqueue.tenant !~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'outbox: tenant must be 1 to 128 bytes without control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.ordering_key IS NOT NULL AND NOT (octet_length(enqueue.ordering_key) BETWEEN 1 AND 512
                                                 AND enqueue.ordering_key !~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'outbox: ordering_key must be 1 to 512 bytes without control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A live job with the same key may finish between the INSERT and the SELECT: then insert again.
    LOOP
        INSERT INTO {schema}.jobs AS j (kind, queue, payload, priority, max_attempts, run_at, unique_key,
                                        timeout_seconds, tenant, ordering_key, metadata)
        VALUES (k, q, body, enqueue.priority, enqueue.max_attempts,
                coalesce(enqueue.run_at, now() + make_interval(secs => coalesce(enqueue.delay, 0))),
                enqueue.unique_key, enqueue.timeout, enqueue.tenant, enqueue.ordering_key,
                enqueue.metadata)
        ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')
        DO NOTHING
        RETURNING j.id INTO new_id;
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        SELECT j.id INTO new_id FROM {schema}.jobs j
        WHERE j.kind = k AND j.unique_key = enqueue.unique_key AND j.state IN ('pending', 'running');
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION {schema}.enqueue IS
    'Enqueue a job in the current transaction; returns its id (the existing one for a live unique_key).';

-- Keys whose head (the oldest unfinished job of the key) waits for a retry or a runner: every
-- later job of the key waits behind it. Cancel the head to let the key move on.
CREATE VIEW {schema}.blocked_keys AS
SELECT DISTINCT ON (j.ordering_key)
       j.ordering_key, j.id AS head_id, j.kind, j.tenant, j.state, j.attempts,
       {schema}.finite_time(j.run_at) AS run_at, j.last_error,
       (SELECT count(*) FROM {schema}.jobs w
        WHERE w.ordering_key = j.ordering_key AND w.state = 'pending' AND w.id > j.id) AS waiting
FROM {schema}.jobs j
WHERE j.ordering_key IS NOT NULL AND j.state IN ('pending', 'running')
ORDER BY j.ordering_key, j.id;

-- Ages from run_at through finite_time(): one row with an infinite run_at no longer breaks it.
CREATE OR REPLACE VIEW {schema}.job_counts AS
SELECT queue, kind, state, count(*) AS jobs,
       max(now() - {schema}.finite_time(run_at)) FILTER (WHERE state = 'pending' AND run_at <= now())
           AS oldest_runnable_age
FROM {schema}.jobs
GROUP BY queue, kind, state;

COMMENT ON VIEW {schema}.blocked_keys IS
    'Per ordering key with unfinished jobs: its head job and how many wait behind it.';

-- outbox: concurrently
-- Each statement below runs on its own, outside a transaction, after the part above commits;
-- `migrate` runs them again until they have all succeeded (each is a no-op once done).
-- The lease's index splits in two: jobs of no tenant in lease order (what the plain lease walks),
-- and tenants' jobs by tenant then lease order (one probe finds a tenant's next job).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_lease_idx ON {schema}.jobs (priority DESC, run_at, id)
    WHERE state = 'pending' AND tenant IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_tenant_idx ON {schema}.jobs (tenant, priority DESC, run_at, id)
    WHERE state = 'pending' AND tenant IS NOT NULL;
-- The head of a key: its unfinished jobs in id order.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_ordering_idx ON {schema}.jobs (ordering_key, id)
    WHERE ordering_key IS NOT NULL AND state IN ('pending', 'running');
DROP INDEX CONCURRENTLY IF EXISTS {schema}.jobs_pending_idx;
