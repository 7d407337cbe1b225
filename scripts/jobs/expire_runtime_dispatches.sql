-- For operators who prefer cron to the dispatch-worker's own expiry loop:
-- pending dispatches past their expiry become expired and drop their token,
-- and their calls stop counting against the tenant's concurrent-call limit
-- (migration 0015).
SELECT expired, released FROM expire_runtime_dispatches();
