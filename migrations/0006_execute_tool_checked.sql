-- Flow 2, the execute hot path in ONE round trip: every check of
-- POST /internal/automation/tools/.../execute, in the documented order, and
-- when all pass, the rate check and the queued execution with its
-- tool.requested event (what enqueue_tool_execution, migration 0004, did).
--
-- The api validates input_json in Rust against a schema it cached, and
-- passes that schema and the verdict in. The function answers 'stale' when
-- the tool's stored schema (or, by name, its name) is no longer the cached
-- one; the api then reads the tool afresh and calls again, so a cached
-- schema can never let an input through that the stored one refuses.
--
-- Atomic under concurrency as before: the call's row lock serialises the
-- executions of one call; the count runs after the lock in its own
-- statement (fresh snapshot in READ COMMITTED) with clock_timestamp().
--
-- Returns (outcome, retry_after, tool_name): outcome is one of 'queued',
-- 'call_not_found', 'tool_not_found', 'stale', 'tool_not_allowed',
-- 'invalid_input', 'integration_disabled', 'tool_endpoint_missing',
-- 'rate_limited' (with retry_after in seconds).
--
-- Committed without waiting for the WAL flush: the caller is answered
-- only after a later commit that waits (see api/src/automation/execute.rs).
CREATE FUNCTION execute_tool_checked(
    p_execution_id     uuid,
    p_tenant_id        uuid,
    p_call_id          uuid,
    p_tool_id          uuid,     -- NULL: the tool was not found by the api
    p_tool_name        text,     -- set for by-name requests: must still match
    p_input_schema     jsonb,    -- the schema p_input_valid was decided with
    p_input_valid      boolean,
    p_require_mapping  boolean,
    p_trace_id         text,
    p_input            jsonb,
    p_deadline_ms      double precision,
    p_max_per_minute   bigint,
    p_event_id         uuid,
    OUT outcome        text,
    OUT retry_after    double precision,
    OUT tool_name      text
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_agent_version uuid;
    v_schema        jsonb;
    v_integration   text;
    v_count         bigint;
    v_oldest        timestamptz;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT agent_version_id INTO v_agent_version
    FROM call_sessions WHERE id = p_call_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        outcome := 'call_not_found';
        RETURN;
    END IF;
    IF p_tool_id IS NULL THEN
        outcome := 'tool_not_found';
        RETURN;
    END IF;
    SELECT name, input_schema INTO tool_name, v_schema
    FROM tools WHERE id = p_tool_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        -- Deleted since the api cached it; by name another tool may now
        -- carry the name, so the api looks again.
        outcome := CASE WHEN p_tool_name IS NULL THEN 'tool_not_found' ELSE 'stale' END;
        RETURN;
    END IF;
    IF v_schema IS DISTINCT FROM p_input_schema
       OR (p_tool_name IS NOT NULL AND tool_name <> p_tool_name) THEN
        outcome := 'stale';
        RETURN;
    END IF;
    IF p_require_mapping AND NOT EXISTS (
        SELECT 1 FROM agent_version_tools
        WHERE tenant_id = p_tenant_id AND agent_version_id = v_agent_version AND tool_id = p_tool_id) THEN
        outcome := 'tool_not_allowed';
        RETURN;
    END IF;
    IF NOT p_input_valid THEN
        outcome := 'invalid_input';
        RETURN;
    END IF;
    SELECT i.status INTO v_integration
    FROM tool_endpoints e
    JOIN integrations i ON i.tenant_id = e.tenant_id AND i.id = e.integration_id
    WHERE e.tenant_id = p_tenant_id AND e.tool_id = p_tool_id;
    IF NOT FOUND THEN
        outcome := 'tool_endpoint_missing';
        RETURN;
    END IF;
    IF v_integration <> 'active' THEN
        outcome := 'integration_disabled';
        RETURN;
    END IF;

    PERFORM 1 FROM call_sessions WHERE id = p_call_id AND tenant_id = p_tenant_id FOR UPDATE;
    SELECT count(*), min(created_at) INTO v_count, v_oldest
    FROM tool_executions
    WHERE call_id = p_call_id AND created_at > clock_timestamp() - interval '60 seconds';
    IF v_count >= p_max_per_minute THEN
        outcome := 'rate_limited';
        retry_after := GREATEST(EXTRACT(EPOCH FROM (v_oldest + interval '60 seconds' - clock_timestamp()))::double precision, 1);
        RETURN;
    END IF;
    INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, status, input, created_at, deadline_at)
    VALUES (p_execution_id, p_tenant_id, p_call_id, p_tool_id, p_trace_id, 'queued', p_input,
            clock_timestamp(), clock_timestamp() + make_interval(secs => p_deadline_ms / 1000));
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, trace_id)
    VALUES (p_event_id, p_tenant_id, p_call_id, 'tool.requested',
            'tool:' || p_execution_id || ':requested',
            jsonb_build_object('execution_id', p_execution_id, 'tool_id', p_tool_id, 'tool', tool_name),
            p_trace_id);
    outcome := 'queued';
END
$$;

DROP FUNCTION enqueue_tool_execution(uuid, uuid, uuid, uuid, text, jsonb, double precision, bigint, uuid, jsonb, text);
