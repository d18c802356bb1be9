-- 0006: least privilege. enqueue() runs with its owner's rights (SECURITY DEFINER, with a fixed
-- search_path), so a role may enqueue with no right on the table at all; EXECUTE on it is no
-- longer granted to PUBLIC. grant_enqueuer(), grant_runner() and grant_reader() give an existing
-- role what each needs and nothing more (`outbox grant` calls them). Run them as the schema's
-- owner, after every migration that adds a table or function (`outbox grant` again).
SET LOCAL lock_timeout = '5s';

ALTER FUNCTION {schema}.enqueue(text, jsonb, timestamptz, integer, integer, text, text,
                                double precision, text, text, double precision, jsonb)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION {schema}.enqueue(text, jsonb, timestamptz, integer, integer, text, text,
                                           double precision, text, text, double precision, jsonb)
    FROM PUBLIC;

-- A running job always has a lease that ends, so the rescuer can end it: no forged 'running' row
-- waits forever. NOT VALID: rows already there are not scanned (the lock stays brief).
ALTER TABLE {schema}.jobs
    ADD CONSTRAINT jobs_running_has_a_lease CHECK (state <> 'running' OR leased_until IS NOT NULL)
        NOT VALID;

-- May call enqueue() and read the schema version; sees no job.
CREATE FUNCTION {schema}.grant_enqueuer(role_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '{schema}', role_name);
    EXECUTE format('GRANT SELECT ON {schema}.migrations TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION {schema}.enqueue(text, jsonb, timestamptz, integer, '
                   'integer, text, text, double precision, text, text, double precision, jsonb) '
                   'TO %I', role_name);
END
$$;

-- May lease, record, enqueue (periodic jobs, handlers), prune and register itself; may not alter,
-- drop or truncate anything, nor change limits.
CREATE FUNCTION {schema}.grant_runner(role_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.grant_enqueuer(role_name);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.jobs, {schema}.runners, '
                   '{schema}.periodic, {schema}.buckets TO %I', role_name);
    EXECUTE format('GRANT SELECT, UPDATE ON {schema}.lease_state TO %I', role_name);
    EXECUTE format('GRANT SELECT ON {schema}.limits TO %I', role_name);
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE {schema}.jobs_id_seq TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION {schema}.lease(text[], text[], integer, double precision, '
                   'text), {schema}.lease_fair(text[], text[], integer, double precision, text), '
                   '{schema}.lease_jobs(text[], text[], integer, double precision, text), '
                   '{schema}.finite_time(timestamptz) TO %I', role_name);
END
$$;

-- May read every job, view and runner (status, metrics, a read-only dashboard); changes nothing.
CREATE FUNCTION {schema}.grant_reader(role_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '{schema}', role_name);
    EXECUTE format('GRANT SELECT ON {schema}.jobs, {schema}.runners, {schema}.periodic, '
                   '{schema}.limits, {schema}.buckets, {schema}.lease_state, {schema}.migrations, '
                   '{schema}.job_counts, {schema}.problem_jobs, {schema}.blocked_keys TO %I',
                   role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION {schema}.finite_time(timestamptz) TO %I', role_name);
END
$$;

REVOKE EXECUTE ON FUNCTION {schema}.grant_enqueuer(text), {schema}.grant_runner(text),
    {schema}.grant_reader(text) FROM PUBLIC;
