-- Per-call statements cost the same on an empty table as on a grown one.
--
-- Postgres plans a foreign-key check once per connection and keeps the
-- plan. On a table never analyzed (every new deployment, a restore, a new
-- tenant's first minutes) it estimates a handful of rows, and then every
-- index that can serve a lookup costs the same; among equals it takes the
-- newest. A check such as `tenant_id = $1 AND id = $2` then went through
-- `call_sessions_tenant_kpi_idx` (tenant_id, started_at): it read the
-- whole tenant for every row inserted, and the connection kept that plan
-- as the table grew. See docs/decisions/0037-plan-stable-keys.md.
--
-- So every foreign key that a per-call insert checks references a primary
-- key alone: `id = $1` can be served by one index only. The child's
-- tenant_id is still always copied from its parent in the statement that
-- writes it.

-- Children of call_sessions.
ALTER TABLE call_events DROP CONSTRAINT call_events_tenant_id_call_id_fkey,
    ADD CONSTRAINT call_events_call_id_fkey FOREIGN KEY (call_id)
        REFERENCES call_sessions (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE transcript_segments DROP CONSTRAINT transcript_segments_tenant_id_call_id_fkey,
    ADD CONSTRAINT transcript_segments_call_id_fkey FOREIGN KEY (call_id)
        REFERENCES call_sessions (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE recordings DROP CONSTRAINT recordings_tenant_id_call_id_fkey,
    ADD CONSTRAINT recordings_call_id_fkey FOREIGN KEY (call_id)
        REFERENCES call_sessions (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE runtime_dispatches DROP CONSTRAINT runtime_dispatches_tenant_id_call_id_fkey,
    ADD CONSTRAINT runtime_dispatches_call_id_fkey FOREIGN KEY (call_id)
        REFERENCES call_sessions (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE tool_executions DROP CONSTRAINT tool_executions_tenant_id_call_id_fkey,
    ADD CONSTRAINT tool_executions_call_id_fkey FOREIGN KEY (call_id)
        REFERENCES call_sessions (id) ON DELETE CASCADE NOT VALID,
    DROP CONSTRAINT tool_executions_tenant_id_tool_id_fkey,
    ADD CONSTRAINT tool_executions_tool_id_fkey FOREIGN KEY (tool_id)
        REFERENCES tools (id) ON DELETE CASCADE NOT VALID;

-- What a new call session points at.
ALTER TABLE call_sessions DROP CONSTRAINT call_sessions_tenant_id_agent_id_fkey,
    ADD CONSTRAINT call_sessions_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE SET NULL NOT VALID,
    DROP CONSTRAINT call_sessions_tenant_id_agent_version_id_fkey,
    ADD CONSTRAINT call_sessions_agent_version_id_fkey FOREIGN KEY (agent_version_id)
        REFERENCES agent_versions (id) ON DELETE SET NULL NOT VALID,
    DROP CONSTRAINT call_sessions_tenant_id_phone_number_id_fkey,
    ADD CONSTRAINT call_sessions_phone_number_id_fkey FOREIGN KEY (phone_number_id)
        REFERENCES phone_numbers (id) ON DELETE SET NULL NOT VALID;

-- Existing rows are checked without blocking writes for the whole scan.
ALTER TABLE call_events VALIDATE CONSTRAINT call_events_call_id_fkey;
ALTER TABLE transcript_segments VALIDATE CONSTRAINT transcript_segments_call_id_fkey;
ALTER TABLE recordings VALIDATE CONSTRAINT recordings_call_id_fkey;
ALTER TABLE runtime_dispatches VALIDATE CONSTRAINT runtime_dispatches_call_id_fkey;
ALTER TABLE tool_executions VALIDATE CONSTRAINT tool_executions_call_id_fkey;
ALTER TABLE tool_executions VALIDATE CONSTRAINT tool_executions_tool_id_fkey;
ALTER TABLE call_sessions VALIDATE CONSTRAINT call_sessions_agent_id_fkey;
ALTER TABLE call_sessions VALIDATE CONSTRAINT call_sessions_agent_version_id_fkey;
ALTER TABLE call_sessions VALIDATE CONSTRAINT call_sessions_phone_number_id_fkey;

-- Nothing references (tenant_id, id) of these two any more; each call paid
-- for the index at its insert.
ALTER TABLE call_sessions DROP CONSTRAINT call_sessions_tenant_id_id_key;
ALTER TABLE runtime_dispatches DROP CONSTRAINT runtime_dispatches_tenant_id_id_key;

-- The client list and the KPIs read the same range, (tenant_id, started_at):
-- one index serves both (the KPI reads stay index-only through INCLUDE),
-- one index less to write per call.
CREATE INDEX call_sessions_tenant_started_kpi_idx ON call_sessions (tenant_id, started_at DESC, id DESC)
    INCLUDE (agent_id, status, direction, answered_at, ended_at, duration_seconds);
DROP INDEX call_sessions_tenant_started_idx;
DROP INDEX call_sessions_tenant_kpi_idx;
ALTER INDEX call_sessions_tenant_started_kpi_idx RENAME TO call_sessions_tenant_started_idx;

-- Autovacuum first analyzes a table after 50 changed rows. Analyzed that
-- small, a table is cheaper to scan whole than through an index, and plans
-- made then (kept per connection) scan it whole until the next analyze,
-- which at a burst's rate can come tens of thousands of rows later. Per-call
-- tables get their first statistics at 1,000 rows, where an index lookup is
-- the cheaper plan by a wide margin; before that the planner's own
-- assumption for a never-analyzed table (at least ten pages) already
-- prefers the index.
ALTER TABLE call_sessions SET (autovacuum_analyze_threshold = 1000, autovacuum_vacuum_threshold = 1000);
ALTER TABLE call_events SET (autovacuum_analyze_threshold = 1000, autovacuum_vacuum_threshold = 1000);
ALTER TABLE transcript_segments SET (autovacuum_analyze_threshold = 1000, autovacuum_vacuum_threshold = 1000);
ALTER TABLE recordings SET (autovacuum_analyze_threshold = 1000, autovacuum_vacuum_threshold = 1000);
ALTER TABLE tool_executions SET (autovacuum_analyze_threshold = 1000, autovacuum_vacuum_threshold = 1000);
ALTER TABLE runtime_dispatches SET (autovacuum_analyze_threshold = 1000, autovacuum_vacuum_threshold = 1000);
