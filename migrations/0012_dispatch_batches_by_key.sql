-- The dispatch-worker's batches, one primary-key statement per row.
--
-- A batch sent as arrays and handled set-wise (`UPDATE ... FROM
-- unnest($1, ...)`, `WHERE id = ANY($1)`) is planned for an array of
-- unknown length: Postgres assumes ten rows, and on a table it has never
-- analyzed (every new deployment) ten index lookups cost more than scanning
-- a table it takes to be ten pages. The generic plan the connection keeps
-- then scans call_events and call_sessions whole for every batch while they
-- grow. A statement for one row is planned as a one-row lookup, and the
-- primary key is the cheaper plan at every size. The batch still makes one
-- round trip and one commit. See docs/decisions/0037-plan-stable-keys.md.

-- For every still-unprocessed inbound event: mark it processed, create the
-- call's dispatch (pending, sealed join token, expiry), fix the call's agent
-- version (the agent's active version at ring time) and append the
-- runtime.handoff_requested outbox event, whose id is the dispatch's and
-- whose trace is the inbound event's. Returns the handoff events to
-- publish. An event already processed (a redelivery) or a call that already
-- has a dispatch produces nothing; an event of another tenant than the one
-- its message named is not touched.
CREATE FUNCTION create_dispatches(
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
               s.agent_version_id IS NULL AS unversioned,
               v.id AS version_id, v.version
        INTO v_call
        FROM call_sessions s
        LEFT JOIN agents a ON a.id = s.agent_id AND a.tenant_id IS NOT DISTINCT FROM s.tenant_id
        LEFT JOIN agent_versions v ON v.id = COALESCE(s.agent_version_id, a.active_version_id)
        WHERE s.id = v_call_id;

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

-- Records a round of outbox publishes: acked events are marked published
-- (handoff events, which nothing in this system reports back on, also
-- complete), every attempt is counted, and any relay lease is released.
-- Losing this in a crash only means one more (deduplicated) publish by the
-- relay, so it does not wait for the WAL flush.
CREATE FUNCTION record_publishes(p_acked uuid[], p_failed uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOREACH v_id IN ARRAY coalesce(p_acked, '{}') LOOP
        UPDATE call_events
        SET published_at = now(),
            processed_at = CASE WHEN type = 'runtime.handoff_requested' THEN now() ELSE processed_at END,
            publish_attempts = publish_attempts + 1,
            relay_lease_until = NULL
        WHERE id = v_id;
    END LOOP;
    FOREACH v_id IN ARRAY coalesce(p_failed, '{}') LOOP
        UPDATE call_events SET publish_attempts = publish_attempts + 1, relay_lease_until = NULL
        WHERE id = v_id;
    END LOOP;
END
$$;
