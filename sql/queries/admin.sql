-- Operator actions on single jobs.

-- name: cancel
-- A pending job is cancelled; so is a running one: its outcome is then never recorded and it
-- is never retried (its runner stops the handler at the next heartbeat where it can).
UPDATE {schema}.jobs
SET state = 'cancelled', finished_at = now(), leased_until = NULL
WHERE id = %s AND state IN ('pending', 'running')
RETURNING id
