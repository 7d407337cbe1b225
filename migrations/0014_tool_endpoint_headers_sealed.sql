-- Tool endpoints' header values sealed at rest, like integration secrets:
-- the values (a JSON object of name to value) are sealed by the api with
-- AES-256-GCM bound to `tool_endpoints:<tenant_id>:<tool_id>:<integration_id>`
-- (shared::automation::tool_endpoint_headers_aad); only the names stay in
-- clear. `headers_template` is kept empty: rows written before this
-- migration are sealed and emptied by the api's start-up reseal
-- (docs/decisions/0040-secrets-bound-to-tenant-and-resealed.md).

ALTER TABLE tool_endpoints
    ADD COLUMN header_names text[] NOT NULL DEFAULT '{}',
    ADD COLUMN headers_ciphertext bytea,
    ADD COLUMN headers_nonce bytea,
    ADD COLUMN headers_key_id text,
    ADD CONSTRAINT tool_endpoints_headers_sealed_check
        CHECK ((headers_ciphertext IS NULL) = (headers_nonce IS NULL));

-- execute_tool_checked (migration 0011) with the sealed header values in
-- the context instead of the clear template; a row still holding clear
-- values is flagged (`headers_unsealed`) and its values left out, so they
-- never travel. Nothing else changes.

CREATE OR REPLACE FUNCTION execute_tool_checked(
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
    OUT tool_name      text,
    OUT context        jsonb
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_call          record;
    v_schema        jsonb;
    v_endpoint      record;
    v_count         bigint;
    v_oldest        timestamptz;
    v_deadline      timestamptz;
    v_since         timestamptz;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT agent_version_id, agent_id, call_sid, from_number, to_number INTO v_call
    FROM call_sessions WHERE id = p_call_id AND tenant_id IS NOT DISTINCT FROM p_tenant_id;
    IF NOT FOUND THEN
        outcome := 'call_not_found';
        RETURN;
    END IF;
    IF p_tool_id IS NULL THEN
        outcome := 'tool_not_found';
        RETURN;
    END IF;
    SELECT name, input_schema INTO tool_name, v_schema
    FROM tools WHERE id = p_tool_id AND tenant_id IS NOT DISTINCT FROM p_tenant_id;
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
        WHERE tenant_id = p_tenant_id AND agent_version_id = v_call.agent_version_id AND tool_id = p_tool_id) THEN
        outcome := 'tool_not_allowed';
        RETURN;
    END IF;
    IF NOT p_input_valid THEN
        outcome := 'invalid_input';
        RETURN;
    END IF;
    SELECT e.webhook_path, e.method, e.headers_ciphertext, e.headers_nonce, e.headers_key_id,
           e.headers_template <> '{}'::jsonb AS headers_unsealed, e.timeout_ms, e.max_retries,
           i.id AS integration_id, i.base_url, i.auth_type, i.header_name, i.secret_ciphertext,
           i.secret_nonce, i.secret_key_id, i.status
    INTO v_endpoint
    FROM tool_endpoints e
    JOIN integrations i ON i.id = e.integration_id AND i.tenant_id IS NOT DISTINCT FROM e.tenant_id
    WHERE e.tool_id = p_tool_id AND e.tenant_id IS NOT DISTINCT FROM p_tenant_id;
    IF NOT FOUND THEN
        outcome := 'tool_endpoint_missing';
        RETURN;
    END IF;
    IF v_endpoint.status <> 'active' THEN
        outcome := 'integration_disabled';
        RETURN;
    END IF;

    -- One call's rate checks take turns on an advisory lock rather than the
    -- call's row lock, which would dirty the row (and write WAL) each time.
    PERFORM pg_advisory_xact_lock(hashtextextended('tool_rate:' || p_call_id::text, 0));
    -- The window's start as a value: compared with clock_timestamp() itself
    -- (volatile) it could not bound the index scan, and every execution the
    -- call ever made was read.
    v_since := clock_timestamp() - interval '60 seconds';
    SELECT count(*), min(created_at) INTO v_count, v_oldest
    FROM tool_executions
    WHERE call_id = p_call_id AND created_at > v_since;
    IF v_count >= p_max_per_minute THEN
        outcome := 'rate_limited';
        retry_after := GREATEST(EXTRACT(EPOCH FROM (v_oldest + interval '60 seconds' - clock_timestamp()))::double precision, 1);
        RETURN;
    END IF;
    v_deadline := clock_timestamp() + make_interval(secs => p_deadline_ms / 1000);
    INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, status, input, created_at, deadline_at)
    VALUES (p_execution_id, p_tenant_id, p_call_id, p_tool_id, p_trace_id, 'queued', p_input,
            clock_timestamp(), v_deadline);
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, trace_id)
    VALUES (p_event_id, p_tenant_id, p_call_id, 'tool.requested',
            'tool:' || p_execution_id || ':requested',
            jsonb_build_object('execution_id', p_execution_id, 'tool_id', p_tool_id, 'tool', tool_name),
            p_trace_id);
    context := jsonb_build_object(
        'id', p_execution_id, 'tenant_id', p_tenant_id, 'call_id', p_call_id,
        'tool_id', p_tool_id, 'trace_id', p_trace_id, 'input', p_input,
        'deadline_at', v_deadline, 'tool_name', tool_name,
        'webhook_path', v_endpoint.webhook_path, 'method', v_endpoint.method,
        'headers_ciphertext', translate(encode(v_endpoint.headers_ciphertext, 'base64'), E'\n', ''),
        'headers_nonce', translate(encode(v_endpoint.headers_nonce, 'base64'), E'\n', ''),
        'headers_key_id', v_endpoint.headers_key_id,
        'headers_unsealed', v_endpoint.headers_unsealed,
        'timeout_ms', v_endpoint.timeout_ms, 'max_retries', v_endpoint.max_retries,
        'integration_id', v_endpoint.integration_id, 'base_url', v_endpoint.base_url,
        'auth_type', v_endpoint.auth_type, 'header_name', v_endpoint.header_name,
        'secret_ciphertext', translate(encode(v_endpoint.secret_ciphertext, 'base64'), E'\n', ''),
        'secret_nonce', translate(encode(v_endpoint.secret_nonce, 'base64'), E'\n', ''),
        'secret_key_id', v_endpoint.secret_key_id,
        'integration_status', v_endpoint.status,
        'call_sid', v_call.call_sid, 'from_number', v_call.from_number,
        'to_number', v_call.to_number, 'agent_id', v_call.agent_id,
        'agent_version', (SELECT version FROM agent_versions
                          WHERE id = v_call.agent_version_id AND tenant_id = p_tenant_id));
    outcome := 'queued';
END
$$;

