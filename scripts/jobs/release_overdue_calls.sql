-- For operators who prefer cron to the dispatch-worker's own loop: calls
-- still counted against their tenant's concurrent-call limit after the
-- longest call allowed (MAX_CALL_DURATION, here its default of two hours)
-- stop counting, recorded with release_reason 'max_duration'.
SELECT release_overdue_calls(interval '2 hours') AS released;
