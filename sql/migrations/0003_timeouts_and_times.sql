-- 0003: per-job timeouts, and when a job was last attempted and last changed.
--
-- Safe on a live table: the new columns are nullable without a default, so adding them only
-- changes the catalog (no rewrite, a lock held for an instant); the new default applies to new
-- rows only. lock_timeout makes the migration fail fast, rather than queue every runner behind
-- it, if a long transaction holds the table.
SET LOCAL lock_timeout = '5s';

ALTER TABLE {schema}.jobs
    ADD COLUMN timeout_seconds double precision
        CHECK (timeout_seconds > 0 AND timeout_seconds <= 604800),
    ADD COLUMN attempted_at timestamptz,
    ADD COLUMN updated_at timestamptz;
ALTER TABLE {schema}.jobs ALTER COLUMN updated_at SET DEFAULT now();
COMMENT ON COLUMN {schema}.jobs.timeout_seconds IS
    'Seconds one attempt may take, overriding its kind''s timeout; NULL: the kind''s.';
COMMENT ON COLUMN {schema}.jobs.attempted_at IS 'When the current (or last) attempt started.';
COMMENT ON COLUMN {schema}.jobs.updated_at IS
    'When outbox last changed the job (enqueue, lease, outcome, operator action); NULL before 0003.';

DROP FUNCTION {schema}.enqueue(text, jsonb, timestamptz, integer, integer, text, text);
-- enqueue from SQL (triggers, other languages): the same rules as the Python enqueue, now with
-- timeout (seconds an attempt may take, overriding the kind's; NULL: the kind's).
-- The payload limit is the setting outbox.max_payload_bytes, 1 MiB when unset.
CREATE FUNCTION {schema}.enqueue(
    kind         text,
    payload      jsonb DEFAULT '{{}}',
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT 20,
    priority     integer DEFAULT 0,
    queue        text DEFAULT 'default',
    unique_key   text DEFAULT NULL,
    timeout      double precision DEFAULT NULL
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

    -- A live job with the same key may finish between the INSERT and the SELECT: then insert again.
    LOOP
        INSERT INTO {schema}.jobs AS j (kind, queue, payload, priority, max_attempts, run_at, unique_key,
                                        timeout_seconds)
        VALUES (k, q, body, enqueue.priority, enqueue.max_attempts, coalesce(enqueue.run_at, now()),
                enqueue.unique_key, enqueue.timeout)
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


-- The lease also stamps attempted_at and updated_at, and returns the job's timeout.
DROP FUNCTION {schema}.lease_jobs(text[], text[], integer, double precision, text);
CREATE FUNCTION {schema}.lease_jobs(
    kinds text[], queues text[], max_jobs integer, lease_seconds double precision, runner text
) RETURNS TABLE (
    id bigint, kind text, queue text, payload jsonb, priority smallint, attempts integer,
    max_attempts integer, run_at timestamptz, created_at timestamptz, unique_key text,
    metadata jsonb, timeout_seconds double precision
)
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH next AS (
        SELECT j.id FROM {schema}.jobs j
        WHERE j.state = 'pending'
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
              j.run_at, j.created_at, j.unique_key, j.metadata, j.timeout_seconds;
END
$$;
