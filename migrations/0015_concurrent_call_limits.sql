-- Capacity per tenant: concurrent-call limits admitted at ring time.
--
-- A call counts against its tenant's (and its agent's) limit from the
-- moment its inbound webhook is admitted (`live`) until it ends, its
-- dispatch expires unclaimed, or it outlives the longest call allowed;
-- `released_at` and `release_reason` say when and why it stopped counting.
-- A call refused for capacity has the status `rejected` (ended at ring
-- time, so no later callback moves it: 0007) with `rejected_reason`, and
-- never counts.
-- See docs/decisions/0043-admission-counts-live-calls-under-a-row-lock.md.

ALTER TABLE tenants ADD COLUMN max_concurrent_calls integer
    CHECK (max_concurrent_calls BETWEEN 0 AND 100000);
ALTER TABLE agents ADD COLUMN max_concurrent_calls integer
    CHECK (max_concurrent_calls BETWEEN 0 AND 100000);

ALTER TABLE call_sessions
    ADD COLUMN live            boolean NOT NULL DEFAULT false,
    ADD COLUMN rejected_reason text,
    ADD COLUMN released_at     timestamptz,
    ADD COLUMN release_reason  text,
    DROP CONSTRAINT call_sessions_status_check,
    ADD CONSTRAINT call_sessions_status_check CHECK (status IN (
        'queued', 'ringing', 'in-progress', 'completed', 'busy', 'failed', 'no-answer',
        'canceled', 'rejected')) NOT VALID,
    ADD CONSTRAINT call_sessions_rejected_reason_check
        CHECK ((status = 'rejected') = (rejected_reason IS NOT NULL)
               AND rejected_reason IN ('capacity')
               AND NOT (live AND rejected_reason IS NOT NULL)) NOT VALID,
    ADD CONSTRAINT call_sessions_release_reason_check
        CHECK ((released_at IS NULL) = (release_reason IS NULL)
               AND release_reason IN ('ended', 'dispatch_expired', 'max_duration')) NOT VALID;
-- Existing rows are checked without blocking writes for the whole scan.
ALTER TABLE call_sessions VALIDATE CONSTRAINT call_sessions_status_check;
ALTER TABLE call_sessions VALIDATE CONSTRAINT call_sessions_rejected_reason_check;
ALTER TABLE call_sessions VALIDATE CONSTRAINT call_sessions_release_reason_check;

-- The live calls of a tenant (and of one of its agents): what admission
-- counts, the safety net sweeps and the live-call gauges read. Only live
-- rows are in it, so it stays as small as the calls in progress however
-- large the table grows. Every read of it names the tenant: a read on
-- `live` alone is planned as a scan of the whole table while the table is
-- new (Postgres takes half the rows of a boolean it has no statistics for
-- to match), and a pooled connection keeps that plan as the table grows.
CREATE INDEX call_sessions_live_idx ON call_sessions (tenant_id, agent_id) WHERE live;

-- Admission of a group of new inbound calls, in the order given: for each
-- CallSid whether it may ring through. Called from the ingress's group
-- upsert, in the same statement and commit.
--
-- Tenants and agents with a limit are locked (FOR NO KEY UPDATE, which the
-- foreign-key checks of other inserts do not wait for), in id order so two
-- groups never wait on each other in a cycle; their live calls are counted
-- after the lock, each count a statement of its own with a fresh snapshot,
-- so it sees every admission committed before it. Admissions of one tenant
-- are thereby serialised across every ingress instance. A tenant and agent
-- without a limit lock nothing and admit at once. A CallSid already
-- recorded (a Twilio retry) keeps the admission it was given: the upsert
-- does not change an existing session, so it is not counted again here.
CREATE FUNCTION admit_inbound_calls(p_call_sids text[], p_tenant_ids uuid[], p_agent_ids uuid[])
RETURNS TABLE (call_sid text, admitted boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_tenants       uuid[] := '{}';
    v_tenant_limits integer[] := '{}';
    v_tenant_live   integer[] := '{}';
    v_agents        uuid[] := '{}';
    v_agent_limits  integer[] := '{}';
    v_agent_live    integer[] := '{}';
    v_id            uuid;
    v_limit         integer;
    v_tenant        uuid;
    v_t             integer;
    v_a             integer;
    v_in            record;
BEGIN
    FOR v_id IN SELECT DISTINCT t FROM unnest(p_tenant_ids) AS t WHERE t IS NOT NULL ORDER BY 1 LOOP
        SELECT max_concurrent_calls INTO v_limit FROM tenants WHERE id = v_id;
        CONTINUE WHEN v_limit IS NULL;
        SELECT max_concurrent_calls INTO v_limit FROM tenants WHERE id = v_id FOR NO KEY UPDATE;
        CONTINUE WHEN v_limit IS NULL;
        v_tenants := v_tenants || v_id;
        v_tenant_limits := v_tenant_limits || v_limit;
        v_tenant_live := v_tenant_live
            || (SELECT count(*)::integer FROM call_sessions s WHERE s.tenant_id = v_id AND s.live);
    END LOOP;
    FOR v_id IN SELECT DISTINCT a FROM unnest(p_agent_ids) AS a WHERE a IS NOT NULL ORDER BY 1 LOOP
        SELECT max_concurrent_calls INTO v_limit FROM agents WHERE id = v_id;
        CONTINUE WHEN v_limit IS NULL;
        SELECT max_concurrent_calls, tenant_id INTO v_limit, v_tenant
        FROM agents WHERE id = v_id FOR NO KEY UPDATE;
        CONTINUE WHEN v_limit IS NULL;
        v_agents := v_agents || v_id;
        v_agent_limits := v_agent_limits || v_limit;
        v_agent_live := v_agent_live
            || (SELECT count(*)::integer FROM call_sessions s
                WHERE s.tenant_id = v_tenant AND s.agent_id = v_id AND s.live);
    END LOOP;

    FOR v_in IN
        SELECT * FROM unnest(p_call_sids, p_tenant_ids, p_agent_ids) AS t(call_sid, tenant_id, agent_id)
    LOOP
        call_sid := v_in.call_sid;
        admitted := true;
        v_t := array_position(v_tenants, v_in.tenant_id);
        v_a := array_position(v_agents, v_in.agent_id);
        IF (v_t IS NOT NULL OR v_a IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM call_sessions s WHERE s.call_sid = v_in.call_sid) THEN
            admitted := (v_t IS NULL OR v_tenant_live[v_t] < v_tenant_limits[v_t])
                    AND (v_a IS NULL OR v_agent_live[v_a] < v_agent_limits[v_a]);
            IF admitted THEN
                IF v_t IS NOT NULL THEN v_tenant_live[v_t] := v_tenant_live[v_t] + 1; END IF;
                IF v_a IS NOT NULL THEN v_agent_live[v_a] := v_agent_live[v_a] + 1; END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Pending dispatches past their expiry become expired and drop their
-- token; their calls, which no runtime took, stop counting against the
-- tenant's limit. One primary-key statement per dispatch (see 0012).
CREATE FUNCTION expire_runtime_dispatches() RETURNS TABLE (expired bigint, released bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_call_id uuid;
BEGIN
    expired := 0;
    released := 0;
    FOR v_call_id IN
        UPDATE runtime_dispatches
        SET status = 'expired', join_token_ciphertext = NULL, join_token_nonce = NULL,
            updated_at = now()
        WHERE status = 'pending' AND expires_at < now()
        RETURNING call_id
    LOOP
        expired := expired + 1;
        UPDATE call_sessions
        SET live = false, released_at = now(), release_reason = 'dispatch_expired',
            updated_at = now()
        WHERE id = v_call_id AND live;
        IF FOUND THEN
            released := released + 1;
        END IF;
    END LOOP;
    RETURN NEXT;
END
$$;

-- The safety net: calls still counted after the longest call allowed (an
-- end that never reached us) stop counting, at most 1,000 a round. Returns
-- how many. The live calls are read tenant by tenant through
-- call_sessions_live_idx; each release is a primary-key statement (0012).
CREATE FUNCTION release_overdue_calls(p_max_duration interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id       uuid;
    v_released bigint := 0;
BEGIN
    FOR v_id IN
        SELECT s.id FROM tenants t
        CROSS JOIN LATERAL (
            SELECT c.id FROM call_sessions c
            WHERE c.tenant_id = t.id AND c.live AND c.started_at < now() - p_max_duration
            LIMIT 1000 -- also keeps the subquery a lookup per tenant, not a join
        ) s
        LIMIT 1000
    LOOP
        UPDATE call_sessions
        SET live = false, released_at = now(), release_reason = 'max_duration', updated_at = now()
        WHERE id = v_id AND live;
        IF FOUND THEN
            v_released := v_released + 1;
        END IF;
    END LOOP;
    RETURN v_released;
END
$$;

-- The dispatch batch of 0012, unchanged but for one rule: a call refused
-- for capacity gets no dispatch.
CREATE OR REPLACE FUNCTION create_dispatches(
    p_event_ids    uuid[],
    p_tenant_ids   uuid[],
    p_dispatch_ids uuid[],
    p_ciphertexts  bytea[],
    p_nonces       bytea[],
    p_key_id       text,
    p_expires_at   timestamptz
) RETURNS SETOF call_events
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_in      record;
    v_call_id uuid;
    v_trace   text;
    v_call    record;
    v_handoff call_events;
BEGIN
    -- One pass over the arrays (subscripting an array of bytea walks it
    -- from the start each time).
    FOR v_in IN
        SELECT * FROM unnest(p_event_ids, p_tenant_ids, p_dispatch_ids, p_ciphertexts, p_nonces)
            AS t(event_id, tenant_id, dispatch_id, ciphertext, nonce)
    LOOP
        UPDATE call_events SET processed_at = now(), published_at = COALESCE(published_at, now())
        WHERE id = v_in.event_id AND tenant_id IS NOT DISTINCT FROM v_in.tenant_id
          AND type = 'call.inbound' AND processed_at IS NULL
        RETURNING call_id, trace_id INTO v_call_id, v_trace;
        CONTINUE WHEN NOT FOUND;

        SELECT s.tenant_id, s.call_sid, s.from_number, s.to_number, s.agent_id,
               s.agent_version_id IS NULL AS unversioned, s.rejected_reason,
               v.id AS version_id, v.version
        INTO v_call
        FROM call_sessions s
        LEFT JOIN agents a ON a.id = s.agent_id AND a.tenant_id IS NOT DISTINCT FROM s.tenant_id
        LEFT JOIN agent_versions v ON v.id = COALESCE(s.agent_version_id, a.active_version_id)
        WHERE s.id = v_call_id;
        -- A call refused at ring time gets no runtime.
        CONTINUE WHEN v_call.rejected_reason IS NOT NULL;

        INSERT INTO runtime_dispatches (id, tenant_id, call_id, agent_id, agent_version_id, status,
            join_token_ciphertext, join_token_nonce, join_token_key_id, expires_at)
        VALUES (v_in.dispatch_id, v_call.tenant_id, v_call_id, v_call.agent_id, v_call.version_id,
                'pending', v_in.ciphertext, v_in.nonce, p_key_id, p_expires_at)
        ON CONFLICT (call_id) DO NOTHING;
        CONTINUE WHEN NOT FOUND;

        IF v_call.unversioned AND v_call.version_id IS NOT NULL THEN
            UPDATE call_sessions SET agent_version_id = v_call.version_id, updated_at = now()
            WHERE id = v_call_id;
        END IF;

        INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload,
                                 needs_publish, occurred_at, trace_id)
        VALUES (v_in.dispatch_id, v_call.tenant_id, v_call_id, 'runtime.handoff_requested',
                'runtime.handoff_requested',
                jsonb_build_object(
                    'dispatch_id', v_in.dispatch_id, 'call_id', v_call_id,
                    'call_sid', v_call.call_sid, 'tenant_id', v_call.tenant_id,
                    'agent_id', v_call.agent_id, 'agent_version_id', v_call.version_id,
                    'agent_version', v_call.version, 'from', v_call.from_number,
                    'to', v_call.to_number, 'expires_at', p_expires_at),
                true, now(), v_trace)
        ON CONFLICT (call_id, idempotency_key) DO NOTHING
        RETURNING * INTO v_handoff;
        IF FOUND THEN
            RETURN NEXT v_handoff;
        END IF;
    END LOOP;
END
$$;
