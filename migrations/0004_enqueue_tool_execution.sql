-- Flow 2: records a queued tool execution (and its tool.requested timeline
-- event) unless the call already had p_max_per_minute executions in the
-- last 60 s; one round trip for the api on the caller's path.
--
-- Atomic under concurrency: the call's row lock serialises the requests of
-- one call, and the count runs after the lock as its own statement (a
-- VOLATILE function takes a fresh snapshot per statement in READ
-- COMMITTED), so it sees every execution committed by earlier lock holders.
--
-- Returns NULL when recorded, else the seconds until the oldest execution
-- in the window leaves it (for Retry-After).
CREATE FUNCTION enqueue_tool_execution(
    p_execution_id       uuid,
    p_tenant_id          uuid,
    p_call_id            uuid,
    p_tool_id            uuid,
    p_trace_id           text,
    p_input              jsonb,
    p_deadline_ms        double precision,
    p_max_per_minute     bigint,
    p_event_id           uuid,
    p_event_payload      jsonb,
    p_synchronous_commit text
) RETURNS double precision
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_count  bigint;
    v_oldest timestamptz;
BEGIN
    -- The transaction's commit durability (AUTOMATION_SYNCHRONOUS_COMMIT).
    PERFORM set_config('synchronous_commit', p_synchronous_commit, true);
    PERFORM 1 FROM call_sessions WHERE id = p_call_id AND tenant_id = p_tenant_id FOR UPDATE;
    -- clock_timestamp(), not now(): now() is when the statement began,
    -- possibly long before the lock was granted.
    SELECT count(*), min(created_at) INTO v_count, v_oldest
    FROM tool_executions
    WHERE call_id = p_call_id AND created_at > clock_timestamp() - interval '60 seconds';
    IF v_count >= p_max_per_minute THEN
        RETURN GREATEST(EXTRACT(EPOCH FROM (v_oldest + interval '60 seconds' - clock_timestamp()))::double precision, 1);
    END IF;
    INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, status, input, created_at, deadline_at)
    VALUES (p_execution_id, p_tenant_id, p_call_id, p_tool_id, p_trace_id, 'queued', p_input,
            clock_timestamp(), clock_timestamp() + make_interval(secs => p_deadline_ms / 1000));
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, trace_id)
    VALUES (p_event_id, p_tenant_id, p_call_id, 'tool.requested',
            'tool:' || p_execution_id || ':requested', p_event_payload, p_trace_id);
    RETURN NULL;
END
$$;
