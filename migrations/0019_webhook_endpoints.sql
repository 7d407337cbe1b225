-- Tenant event webhooks (docs/decisions/0048-tenant-event-webhooks.md).
--
-- A tenant's endpoints subscribe to event types. An event is recorded by a
-- trigger in the transaction of the change it describes, as one message and
-- one delivery per subscribed endpoint; the automation-worker delivers the
-- due deliveries and records every attempt.

CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY,
    tenant_id                   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                         text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    description                 text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    event_types                 text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 32),
    disabled                    boolean NOT NULL DEFAULT false,
    disabled_reason             text,
    -- The signing secret (`whsec_...`), sealed bound to tenant and endpoint.
    secret_ciphertext           bytea NOT NULL,
    secret_nonce                bytea NOT NULL,
    secret_key_id               text NOT NULL,
    -- The secret before the last rotation, still signed with until it expires.
    previous_secret_ciphertext  bytea,
    previous_secret_nonce       bytea,
    previous_secret_key_id      text,
    previous_secret_expires_at  timestamptz,
    -- The first failed attempt since the last success: an endpoint failing
    -- for long enough is disabled.
    failing_since               timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    CHECK ((previous_secret_ciphertext IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, created_at DESC, id DESC);

-- One event, as its body's `type` and `data`; `id` is the `webhook-id` on
-- every attempt of every endpoint, `created_at` the body's `timestamp`.
CREATE TABLE webhook_messages (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_type  text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);

-- One message to one endpoint: a chain of attempts. `next_attempt_at` is
-- when the next attempt is due. The relay that hands a due delivery to a
-- worker sets a new `lease` and moves `next_attempt_at` forward by the
-- lease's length; only the holder of that lease records the attempt, and a
-- delivery whose worker died is due again when the lease runs out.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    message_id       uuid NOT NULL,
    endpoint_id      uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease            uuid,
    last_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, message_id) REFERENCES webhook_messages (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_message_idx ON webhook_deliveries (message_id);

CREATE TABLE webhook_attempts (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    delivery_id  uuid NOT NULL,
    attempted_at timestamptz NOT NULL,
    http_status  integer,
    error        text CHECK (length(error) <= 500),
    latency_ms   integer NOT NULL CHECK (latency_ms >= 0),
    FOREIGN KEY (tenant_id, delivery_id) REFERENCES webhook_deliveries (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, attempted_at);

-- Whether an enabled endpoint of the tenant subscribes to `p_type`. Every
-- trigger asks first, so a tenant without endpoints pays one index probe
-- and builds no data.
CREATE FUNCTION webhook_subscribed(p_tenant uuid, p_type text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM webhook_endpoints
                   WHERE tenant_id = p_tenant AND NOT disabled AND p_type = ANY (event_types))
$$;

-- Writes `p_type` with `p_data` as one message and a delivery for every
-- enabled endpoint of the tenant subscribed to it; the caller has asked
-- `webhook_subscribed`. Returns the message id.
CREATE FUNCTION insert_webhook_event(p_tenant uuid, p_type text, p_data jsonb) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_message uuid := gen_random_uuid();
BEGIN
    INSERT INTO webhook_messages (id, tenant_id, event_type, data)
    VALUES (v_message, p_tenant, p_type, p_data);
    INSERT INTO webhook_deliveries (id, tenant_id, message_id, endpoint_id)
    SELECT gen_random_uuid(), p_tenant, v_message, e.id
    FROM webhook_endpoints e
    WHERE e.tenant_id = p_tenant AND NOT e.disabled AND p_type = ANY (e.event_types);
    RETURN v_message;
END $$;

-- Records `p_type` with `p_data` for every enabled endpoint of the tenant
-- subscribed to it; nothing (NULL) when there is none.
CREATE FUNCTION record_webhook_event(p_tenant uuid, p_type text, p_data jsonb) RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT webhook_subscribed(p_tenant, p_type) THEN
        RETURN NULL;
    END IF;
    RETURN insert_webhook_event(p_tenant, p_type, p_data);
END $$;

-- The call as every call.* event describes it.
CREATE FUNCTION webhook_call_data(c call_sessions) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'tenant_id', c.tenant_id, 'call_id', c.id, 'call_sid', c.call_sid,
        'agent_id', c.agent_id, 'agent_version_id', c.agent_version_id,
        'phone_number_id', c.phone_number_id, 'direction', c.direction,
        'from', c.from_number, 'to', c.to_number, 'status', c.status,
        'started_at', c.started_at, 'answered_at', c.answered_at, 'ended_at', c.ended_at)
$$;

-- call.started: when the dispatch-worker has taken the inbound call (its
-- inbound event processed), not in the ingress's insert: the inbound
-- path's statement stays as cheap as it is.
-- Every lookup of the call is by its primary key, the tenant compared on the
-- row it found (IS NOT DISTINCT FROM is no index condition): a generic plan
-- on `tenant_id = $n` could pick an index led by it and read the tenant's
-- calls (docs/decisions/0037-plan-stable-keys.md).
CREATE FUNCTION webhook_call_started() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    c call_sessions;
BEGIN
    IF NOT webhook_subscribed(NEW.tenant_id, 'call.started') THEN
        RETURN NULL;
    END IF;
    SELECT * INTO c FROM call_sessions WHERE id = NEW.call_id;
    IF FOUND AND c.tenant_id = NEW.tenant_id THEN
        PERFORM insert_webhook_event(c.tenant_id, 'call.started', webhook_call_data(c));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER call_events_webhook_started AFTER UPDATE OF processed_at ON call_events FOR EACH ROW
    WHEN (OLD.processed_at IS NULL AND NEW.processed_at IS NOT NULL AND NEW.type = 'call.inbound')
    EXECUTE FUNCTION webhook_call_started();

CREATE FUNCTION webhook_call_answered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT webhook_subscribed(NEW.tenant_id, 'call.answered') THEN
        RETURN NULL;
    END IF;
    PERFORM insert_webhook_event(NEW.tenant_id, 'call.answered', webhook_call_data(NEW));
    RETURN NULL;
END $$;
-- Triggers fire by name: answered before ended when one callback does both.
CREATE TRIGGER call_sessions_webhook_1_answered AFTER UPDATE ON call_sessions FOR EACH ROW
    WHEN (OLD.answered_at IS NULL AND NEW.answered_at IS NOT NULL)
    EXECUTE FUNCTION webhook_call_answered();

-- call.ended: the status became final. Ring time runs to the answer (or to
-- the end of a call never answered), talk time from the answer to the end
-- (Twilio's CallDuration when given), total from start to end.
CREATE FUNCTION webhook_call_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_end timestamptz := COALESCE(NEW.ended_at, now());
BEGIN
    IF NOT webhook_subscribed(NEW.tenant_id, 'call.ended') THEN
        RETURN NULL;
    END IF;
    PERFORM insert_webhook_event(NEW.tenant_id, 'call.ended', webhook_call_data(NEW) || jsonb_build_object(
        'ring_seconds', GREATEST(0, round(date_part('epoch', COALESCE(NEW.answered_at, v_end) - NEW.started_at))::int),
        'talk_seconds', CASE WHEN NEW.answered_at IS NULL THEN 0
                             ELSE COALESCE(NEW.duration_seconds,
                                           GREATEST(0, round(date_part('epoch', v_end - NEW.answered_at))::int)) END,
        'total_seconds', GREATEST(0, round(date_part('epoch', v_end - NEW.started_at))::int)));
    RETURN NULL;
END $$;
CREATE TRIGGER call_sessions_webhook_2_ended AFTER UPDATE ON call_sessions FOR EACH ROW
    WHEN (OLD.status NOT IN ('completed', 'busy', 'failed', 'no-answer', 'canceled')
          AND NEW.status IN ('completed', 'busy', 'failed', 'no-answer', 'canceled'))
    EXECUTE FUNCTION webhook_call_ended();

-- The agent of a call, for events of rows that hang off it.
CREATE FUNCTION webhook_call_agent(p_call uuid, p_tenant uuid) RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT agent_id FROM call_sessions WHERE id = p_call AND tenant_id IS NOT DISTINCT FROM p_tenant
$$;

-- call.recording_ready: a recording completed. The URL is not part of the
-- record; the worker adds it to the body where RECORDINGS_EXPOSE_URL=true.
CREATE FUNCTION webhook_recording_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT webhook_subscribed(NEW.tenant_id, 'call.recording_ready') THEN
        RETURN NULL;
    END IF;
    PERFORM insert_webhook_event(NEW.tenant_id, 'call.recording_ready', jsonb_build_object(
        'tenant_id', NEW.tenant_id, 'call_id', NEW.call_id, 'agent_id', webhook_call_agent(NEW.call_id, NEW.tenant_id),
        'recording_id', NEW.id, 'recording_sid', NEW.recording_sid,
        'duration_seconds', NEW.duration_seconds, 'channels', NEW.channels, 'status', NEW.status));
    RETURN NULL;
END $$;
CREATE TRIGGER recordings_webhook_ready_insert AFTER INSERT ON recordings FOR EACH ROW
    WHEN (NEW.status = 'completed')
    EXECUTE FUNCTION webhook_recording_ready();
CREATE TRIGGER recordings_webhook_ready_update AFTER UPDATE ON recordings FOR EACH ROW
    WHEN (OLD.status <> 'completed' AND NEW.status = 'completed')
    EXECUTE FUNCTION webhook_recording_ready();

-- call.transcript_ready: the runtime ended the call, so no segment follows.
CREATE FUNCTION webhook_transcript_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT webhook_subscribed(NEW.tenant_id, 'call.transcript_ready') THEN
        RETURN NULL;
    END IF;
    PERFORM insert_webhook_event(NEW.tenant_id, 'call.transcript_ready', jsonb_build_object(
        'tenant_id', NEW.tenant_id, 'call_id', NEW.call_id, 'agent_id', webhook_call_agent(NEW.call_id, NEW.tenant_id),
        'segments', (SELECT count(*) FROM transcript_segments t
                     WHERE t.call_id = NEW.call_id AND t.tenant_id IS NOT DISTINCT FROM NEW.tenant_id)));
    RETURN NULL;
END $$;
CREATE TRIGGER call_events_webhook_transcript_ready AFTER INSERT ON call_events FOR EACH ROW
    WHEN (NEW.type = 'call.ended')
    EXECUTE FUNCTION webhook_transcript_ready();

CREATE FUNCTION webhook_tool_failed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT webhook_subscribed(NEW.tenant_id, 'tool.execution_failed') THEN
        RETURN NULL;
    END IF;
    PERFORM insert_webhook_event(NEW.tenant_id, 'tool.execution_failed', jsonb_build_object(
        'tenant_id', NEW.tenant_id, 'call_id', NEW.call_id, 'agent_id', webhook_call_agent(NEW.call_id, NEW.tenant_id),
        'execution_id', NEW.id, 'tool_id', NEW.tool_id, 'error_code', NEW.error_code,
        'error_message', NEW.error_message, 'http_status', NEW.http_status,
        'attempts', NEW.attempts, 'latency_ms', NEW.latency_ms));
    RETURN NULL;
END $$;
CREATE TRIGGER tool_executions_webhook_failed_insert AFTER INSERT ON tool_executions FOR EACH ROW
    WHEN (NEW.status = 'failed')
    EXECUTE FUNCTION webhook_tool_failed();
CREATE TRIGGER tool_executions_webhook_failed_update AFTER UPDATE ON tool_executions FOR EACH ROW
    WHEN (OLD.status <> 'failed' AND NEW.status = 'failed')
    EXECUTE FUNCTION webhook_tool_failed();

CREATE FUNCTION webhook_dispatch_expired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT webhook_subscribed(NEW.tenant_id, 'runtime.dispatch_expired') THEN
        RETURN NULL;
    END IF;
    PERFORM insert_webhook_event(NEW.tenant_id, 'runtime.dispatch_expired', jsonb_build_object(
        'tenant_id', NEW.tenant_id, 'call_id', NEW.call_id, 'agent_id', NEW.agent_id,
        'agent_version_id', NEW.agent_version_id, 'dispatch_id', NEW.id,
        'expires_at', NEW.expires_at));
    RETURN NULL;
END $$;
CREATE TRIGGER runtime_dispatches_webhook_expired AFTER UPDATE ON runtime_dispatches FOR EACH ROW
    WHEN (OLD.status <> 'expired' AND NEW.status = 'expired')
    EXECUTE FUNCTION webhook_dispatch_expired();
