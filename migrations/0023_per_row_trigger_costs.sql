-- What the hot paths' row triggers cost before they do anything. Profiled
-- at 1,000 inbound calls/s (small groups, so what a statement pays once
-- weighs as much as what it pays per row), two SQL-language functions were
-- parsed anew there:
--
-- * `webhook_subscribed`, asked by every webhook trigger (`call.started` on
--   every inbound call the dispatch-worker takes), cannot be inlined (its
--   body is a sub-select), so each call ran it as an SQL function: its body
--   parsed and planned anew every time, about a tenth of the worker's
--   Postgres time. As PL/pgSQL its plan is made once per connection;
--   `webhook_call_agent` (a read, never inlined either) likewise.
-- * `kpi_hour_needs_mark` in the KPI triggers' WHEN clauses is inlined, and
--   so its body was parsed and analyzed again for every statement that
--   inserts or updates calls or tool executions. The WHEN clauses now hold
--   the expression itself. The function stays for the marking functions
--   (PL/pgSQL, planned once per connection); the clauses below restate its
--   rule and must agree with it.

CREATE OR REPLACE FUNCTION webhook_subscribed(p_tenant uuid, p_type text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM webhook_endpoints
                   WHERE tenant_id = p_tenant AND NOT disabled AND p_type = ANY (event_types));
END $$;

CREATE OR REPLACE FUNCTION webhook_call_agent(p_call uuid, p_tenant uuid) RETURNS uuid
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT agent_id FROM call_sessions
            WHERE id = p_call AND tenant_id IS NOT DISTINCT FROM p_tenant);
END $$;

DROP TRIGGER call_sessions_kpi_insert ON call_sessions;
CREATE TRIGGER call_sessions_kpi_insert AFTER INSERT ON call_sessions FOR EACH ROW
    WHEN (date_trunc('hour', NEW.started_at, 'UTC') + interval '1 hour'
          <= clock_timestamp() + interval '1 minute')
    EXECUTE FUNCTION kpi_mark_call();

DROP TRIGGER call_sessions_kpi_update ON call_sessions;
CREATE TRIGGER call_sessions_kpi_update AFTER UPDATE ON call_sessions FOR EACH ROW
    WHEN ((date_trunc('hour', OLD.started_at, 'UTC') + interval '1 hour'
               <= clock_timestamp() + interval '1 minute'
           OR date_trunc('hour', NEW.started_at, 'UTC') + interval '1 hour'
               <= clock_timestamp() + interval '1 minute')
          AND (OLD.tenant_id, OLD.agent_id, OLD.status, OLD.direction, OLD.started_at,
               OLD.answered_at, OLD.ended_at, OLD.duration_seconds)
              IS DISTINCT FROM
              (NEW.tenant_id, NEW.agent_id, NEW.status, NEW.direction, NEW.started_at,
               NEW.answered_at, NEW.ended_at, NEW.duration_seconds))
    EXECUTE FUNCTION kpi_mark_call();

DROP TRIGGER tool_executions_kpi_insert ON tool_executions;
CREATE TRIGGER tool_executions_kpi_insert AFTER INSERT ON tool_executions FOR EACH ROW
    WHEN (date_trunc('hour', NEW.created_at, 'UTC') + interval '1 hour'
          <= clock_timestamp() + interval '1 minute')
    EXECUTE FUNCTION kpi_mark_tool_execution();

DROP TRIGGER tool_executions_kpi_update ON tool_executions;
CREATE TRIGGER tool_executions_kpi_update AFTER UPDATE ON tool_executions FOR EACH ROW
    WHEN ((date_trunc('hour', OLD.created_at, 'UTC') + interval '1 hour'
               <= clock_timestamp() + interval '1 minute'
           OR date_trunc('hour', NEW.created_at, 'UTC') + interval '1 hour'
               <= clock_timestamp() + interval '1 minute')
          AND (OLD.tenant_id, OLD.call_id, OLD.status, OLD.latency_ms, OLD.created_at)
              IS DISTINCT FROM
              (NEW.tenant_id, NEW.call_id, NEW.status, NEW.latency_ms, NEW.created_at))
    EXECUTE FUNCTION kpi_mark_tool_execution();
