-- Covering indexes for GET /client/kpis: the figures of a period are read
-- with index-only scans instead of visiting every call's heap row (at a
-- million calls per tenant, a 30-day window is tens of thousands of rows).
-- The list keeps using call_sessions_tenant_started_idx from 0001.

CREATE INDEX call_sessions_tenant_kpi_idx ON call_sessions (tenant_id, started_at)
    INCLUDE (agent_id, status, direction, answered_at, ended_at, duration_seconds);

CREATE INDEX tool_executions_tenant_kpi_idx ON tool_executions (tenant_id, created_at)
    INCLUDE (call_id, status, latency_ms);
