-- Least privilege (migration 0006): give an existing role what one part of outbox needs.

-- name: grant_enqueuer
SELECT {schema}.grant_enqueuer(%s)

-- name: grant_runner
SELECT {schema}.grant_runner(%s)

-- name: grant_reader
SELECT {schema}.grant_reader(%s)
