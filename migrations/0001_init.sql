-- The whole data model of DESIGN.md. Every tenant-owned row carries
-- tenant_id, and child rows reference their parent through
-- (tenant_id, id) pairs, so a row can never point into another tenant.

CREATE TABLE tenants (
    id             uuid PRIMARY KEY,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    retention_days integer CHECK (retention_days BETWEEN 1 AND 3650),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE memberships (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('internal_admin', 'internal_operator', 'client_viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tenant_id)
);
CREATE INDEX memberships_tenant_idx ON memberships (tenant_id);

CREATE TABLE agents (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    active_version_id uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX agents_tenant_created_idx ON agents (tenant_id, created_at DESC, id DESC);

CREATE TABLE agent_versions (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    agent_id     uuid NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    config       jsonb NOT NULL CHECK (jsonb_typeof(config) = 'object'),
    status       text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'published')),
    published_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, version),
    UNIQUE (tenant_id, id),
    UNIQUE (agent_id, id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id) ON DELETE CASCADE,
    CHECK ((status = 'published') = (published_at IS NOT NULL))
);

-- One active version per agent: the agent points at it, so switching is a
-- single UPDATE. The version must belong to the agent.
ALTER TABLE agents
    ADD CONSTRAINT agents_active_version_fk
    FOREIGN KEY (id, active_version_id) REFERENCES agent_versions (agent_id, id)
    DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE phone_numbers (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    e164       text NOT NULL CHECK (e164 ~ '^\+[1-9][0-9]{7,14}$'),
    twilio_sid text NOT NULL CHECK (length(twilio_sid) BETWEEN 1 AND 64),
    agent_id   uuid,
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT phone_numbers_e164_key UNIQUE (e164),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id)
);
CREATE INDEX phone_numbers_tenant_idx ON phone_numbers (tenant_id, created_at DESC, id DESC);

CREATE TABLE integrations (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind              text NOT NULL DEFAULT 'n8n' CHECK (kind IN ('n8n')),
    base_url          text NOT NULL,
    auth_type         text NOT NULL CHECK (auth_type IN ('none', 'header', 'basic', 'bearer')),
    header_name       text,
    secret_ciphertext bytea,
    secret_nonce      bytea,
    secret_key_id     text,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    last_tested_at    timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    CHECK ((secret_ciphertext IS NULL) = (secret_nonce IS NULL)),
    CHECK (auth_type <> 'header' OR header_name IS NOT NULL)
);
CREATE INDEX integrations_tenant_idx ON integrations (tenant_id, created_at DESC, id DESC);

CREATE TABLE tools (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    description  text NOT NULL DEFAULT '',
    input_schema jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tools_tenant_name_key UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE tool_endpoints (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    tool_id          uuid NOT NULL,
    integration_id   uuid NOT NULL,
    webhook_path     text NOT NULL CHECK (length(webhook_path) BETWEEN 1 AND 500),
    method           text NOT NULL DEFAULT 'POST' CHECK (method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')),
    headers_template jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(headers_template) = 'object'),
    timeout_ms       integer NOT NULL DEFAULT 8000 CHECK (timeout_ms BETWEEN 100 AND 60000),
    max_retries      integer NOT NULL DEFAULT 2 CHECK (max_retries BETWEEN 0 AND 10),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- One endpoint per tool; setting it again replaces it.
    CONSTRAINT tool_endpoints_tool_key UNIQUE (tool_id),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, tool_id) REFERENCES tools (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, integration_id) REFERENCES integrations (tenant_id, id)
);

CREATE TABLE agent_version_tools (
    tenant_id        uuid NOT NULL,
    agent_version_id uuid NOT NULL,
    tool_id          uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_version_id, tool_id),
    FOREIGN KEY (tenant_id, agent_version_id) REFERENCES agent_versions (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tool_id) REFERENCES tools (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE call_sessions (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    call_sid         text NOT NULL CHECK (length(call_sid) BETWEEN 1 AND 64),
    account_sid      text,
    phone_number_id  uuid,
    agent_id         uuid,
    agent_version_id uuid,
    from_number      text NOT NULL DEFAULT '',
    to_number        text NOT NULL DEFAULT '',
    direction        text NOT NULL DEFAULT 'inbound',
    status           text NOT NULL DEFAULT 'ringing'
                     CHECK (status IN ('queued', 'ringing', 'in-progress', 'completed', 'busy', 'failed', 'no-answer', 'canceled')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    answered_at      timestamptz,
    ended_at         timestamptz,
    duration_seconds integer CHECK (duration_seconds >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT call_sessions_call_sid_key UNIQUE (call_sid),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id) ON DELETE SET NULL (agent_id),
    FOREIGN KEY (tenant_id, agent_version_id) REFERENCES agent_versions (tenant_id, id) ON DELETE SET NULL (agent_version_id),
    FOREIGN KEY (tenant_id, phone_number_id) REFERENCES phone_numbers (tenant_id, id) ON DELETE SET NULL (phone_number_id)
);
-- Client list (newest first, keyset) and KPI windows.
CREATE INDEX call_sessions_tenant_started_idx ON call_sessions (tenant_id, started_at DESC, id DESC);
CREATE INDEX call_sessions_tenant_agent_started_idx ON call_sessions (tenant_id, agent_id, started_at DESC, id DESC);

-- The timeline of a call and the outbox: events with needs_publish are
-- relayed to NATS until published_at is set; consumers set processed_at.
CREATE TABLE call_events (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    call_id          uuid NOT NULL,
    type             text NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    trace_id         text,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    needs_publish    boolean NOT NULL DEFAULT false,
    published_at     timestamptz,
    processed_at     timestamptz,
    publish_attempts integer NOT NULL DEFAULT 0,
    CONSTRAINT call_events_call_key UNIQUE (call_id, idempotency_key),
    FOREIGN KEY (tenant_id, call_id) REFERENCES call_sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX call_events_timeline_idx ON call_events (call_id, occurred_at, id);
CREATE INDEX call_events_unpublished_idx ON call_events (created_at)
    WHERE needs_publish AND published_at IS NULL;
CREATE INDEX call_events_unprocessed_idx ON call_events (published_at)
    WHERE needs_publish AND published_at IS NOT NULL AND processed_at IS NULL;

CREATE TABLE transcript_segments (
    id          uuid PRIMARY KEY, -- the runtime event id (idempotency key)
    tenant_id   uuid NOT NULL,
    call_id     uuid NOT NULL,
    speaker     text NOT NULL CHECK (speaker IN ('caller', 'agent')),
    text        text NOT NULL,
    start_ms    integer NOT NULL CHECK (start_ms >= 0),
    end_ms      integer NOT NULL CHECK (end_ms >= start_ms),
    occurred_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, call_id) REFERENCES call_sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX transcript_segments_call_idx ON transcript_segments (call_id, start_ms, id);

CREATE TABLE recordings (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    call_id          uuid NOT NULL,
    recording_sid    text NOT NULL,
    url              text,
    duration_seconds integer CHECK (duration_seconds >= 0),
    channels         integer CHECK (channels BETWEEN 1 AND 2),
    status           text NOT NULL DEFAULT 'completed',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recordings_sid_key UNIQUE (recording_sid),
    FOREIGN KEY (tenant_id, call_id) REFERENCES call_sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX recordings_call_idx ON recordings (call_id);

CREATE TABLE tool_executions (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    call_id       uuid NOT NULL,
    tool_id       uuid NOT NULL,
    trace_id      text NOT NULL,
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    input         jsonb NOT NULL,
    output        jsonb,
    error_code    text,
    error_message text,
    http_status   integer,
    attempts      integer NOT NULL DEFAULT 0,
    latency_ms    integer,
    deadline_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    FOREIGN KEY (tenant_id, call_id) REFERENCES call_sessions (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tool_id) REFERENCES tools (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX tool_executions_call_idx ON tool_executions (call_id, created_at);
CREATE INDEX tool_executions_tenant_created_idx ON tool_executions (tenant_id, created_at);
CREATE INDEX tool_executions_open_idx ON tool_executions (deadline_at)
    WHERE status IN ('queued', 'running');

CREATE TABLE runtime_dispatches (
    id                    uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL,
    call_id               uuid NOT NULL,
    agent_id              uuid,
    agent_version_id      uuid,
    status                text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'claimed', 'expired')),
    join_token_ciphertext bytea,
    join_token_nonce      bytea,
    join_token_key_id     text,
    expires_at            timestamptz NOT NULL,
    claimed_by            text,
    claimed_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT runtime_dispatches_call_key UNIQUE (call_id),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, call_id) REFERENCES call_sessions (tenant_id, id) ON DELETE CASCADE,
    -- A claimed or expired dispatch no longer holds its token.
    CHECK (status = 'pending' OR join_token_ciphertext IS NULL)
);
CREATE INDEX runtime_dispatches_pending_idx ON runtime_dispatches (expires_at) WHERE status = 'pending';

CREATE TABLE legal_holds (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    call_id     uuid,
    reason      text NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    released_by text,
    UNIQUE (tenant_id, id)
    -- call_id has no foreign key on purpose: a released hold must not stop
    -- the call's deletion, and the hold record outlives the call. The api
    -- checks the call is the tenant's when the hold is placed.
);
CREATE INDEX legal_holds_active_idx ON legal_holds (tenant_id, call_id) WHERE released_at IS NULL;

CREATE TABLE audit_log (
    id          uuid PRIMARY KEY,
    tenant_id   uuid REFERENCES tenants (id) ON DELETE SET NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_created_idx ON audit_log (tenant_id, created_at DESC, id DESC);
