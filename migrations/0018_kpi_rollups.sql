-- Rollups for GET /client/kpis, so a range costs the same whatever its
-- length and the tenant's size. See docs/decisions/0047-kpi-rollups.md.
--
-- The rollups are a pure function of the rows: the dispatch-worker
-- computes them from call_sessions and tool_executions, hour by hour, once
-- an hour is over (kpi_rollup_progress says how far), and computes an hour
-- again when a row of it changed later. Such a change, whatever wrote it
-- (a late status callback, an import of past calls, a deletion), marks its
-- hour in kpi_dirty_hours from a trigger, in the same transaction; a reader
-- takes a rollup only for hours that are computed and not marked, and reads
-- the rows for the rest. Figures are therefore exact at every moment, and
-- the compaction can run late, twice, or not at all.

-- "All agents" rows use this key; a per-agent row uses the agent's id.
-- (No agent has the nil id; the api refuses it as a filter.)

-- Counts and sums per quarter hour (grain 0), hour (grain 1) and UTC day
-- (grain 2): calls by started_at, tool executions by created_at. A reader
-- covers each day of its time zone with the largest that fit (a UTC day,
-- hours, and quarters where a zone's day starts on one, as India's does).
CREATE TABLE kpi_counts (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_key        uuid NOT NULL,
    grain            smallint NOT NULL CHECK (grain IN (0, 1, 2)),
    bucket           timestamptz NOT NULL,
    calls            bigint NOT NULL DEFAULT 0,
    queued           bigint NOT NULL DEFAULT 0,
    ringing          bigint NOT NULL DEFAULT 0,
    in_progress      bigint NOT NULL DEFAULT 0,
    completed        bigint NOT NULL DEFAULT 0,
    busy             bigint NOT NULL DEFAULT 0,
    failed           bigint NOT NULL DEFAULT 0,
    no_answer        bigint NOT NULL DEFAULT 0,
    canceled         bigint NOT NULL DEFAULT 0,
    rejected         bigint NOT NULL DEFAULT 0,
    inbound          bigint NOT NULL DEFAULT 0,
    answered_inbound bigint NOT NULL DEFAULT 0,
    with_duration    bigint NOT NULL DEFAULT 0,
    seconds          float8 NOT NULL DEFAULT 0,
    tools_total      bigint NOT NULL DEFAULT 0,
    tools_succeeded  bigint NOT NULL DEFAULT 0,
    tools_failed     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, agent_key, grain, bucket)
);
-- The compaction replaces a range of buckets for every agent at once.
CREATE INDEX kpi_counts_compaction_idx ON kpi_counts (tenant_id, grain, bucket);

-- Exact distributions for the percentiles: each value with how many calls
-- had that duration (metric 1, seconds) or tool executions that latency
-- (metric 2, ms), per UTC day (grain 2) and UTC month (grain 3), as two
-- arrays sorted by value. Twilio's durations are whole seconds and
-- latencies whole milliseconds, so a day or a month holds a few thousand
-- values at most however many calls it had. A day is computed once it is
-- over, a month once it is over.
CREATE TABLE kpi_histograms (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_key uuid NOT NULL,
    metric    smallint NOT NULL CHECK (metric IN (1, 2)),
    grain     smallint NOT NULL CHECK (grain IN (2, 3)),
    bucket    timestamptz NOT NULL,
    vals      float8[] NOT NULL,
    counts    bigint[] NOT NULL,
    PRIMARY KEY (tenant_id, agent_key, metric, grain, bucket)
);

-- Every hour before rolled_up_to has been computed (unless marked dirty).
CREATE TABLE kpi_rollup_progress (
    tenant_id    uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    rolled_up_to timestamptz NOT NULL
);

-- Hours whose rows changed after they may have been computed. Append only
-- (no unique key): a writer never waits for another writer here, and the
-- compaction, in a repeatable-read snapshot, deletes exactly the marks that
-- snapshot saw (a mark committed later stays for the next run).
CREATE TABLE kpi_dirty_hours (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id uuid NOT NULL,
    hour      timestamptz NOT NULL
);
CREATE INDEX kpi_dirty_hours_tenant_idx ON kpi_dirty_hours (tenant_id, hour);

-- Whether a change to a row of this hour must be marked: the compaction
-- computes an hour only once it ended more than five minutes before (see
-- kpi_compaction_cutoff), so a change made while the hour is running, or
-- less than a minute before its end, needs no mark as long as its
-- transaction commits within six minutes. Calls ringing now cost nothing.
CREATE FUNCTION kpi_hour_needs_mark(p_at timestamptz) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT date_trunc('hour', p_at, 'UTC') + interval '1 hour'
           <= clock_timestamp() + interval '1 minute'
$$;

CREATE FUNCTION kpi_compaction_cutoff() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('hour', now() - interval '5 minutes', 'UTC')
$$;

-- Deletions: one statement per batch of rows (transition tables), so an
-- erasure of many calls writes one mark per hour.
CREATE FUNCTION kpi_mark_deleted_calls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kpi_dirty_hours (tenant_id, hour)
    SELECT DISTINCT tenant_id, date_trunc('hour', started_at, 'UTC')
    FROM old_rows WHERE kpi_hour_needs_mark(started_at);
    RETURN NULL;
END
$$;

CREATE FUNCTION kpi_mark_deleted_tool_executions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kpi_dirty_hours (tenant_id, hour)
    SELECT DISTINCT tenant_id, date_trunc('hour', created_at, 'UTC')
    FROM old_rows WHERE kpi_hour_needs_mark(created_at);
    RETURN NULL;
END
$$;

-- Inserts and updates come a row or a batch at a time on the hot paths:
-- row triggers whose WHEN Postgres evaluates in place, so inserting a call
-- that rings now, updating it, or recording a tool's outcome runs no
-- function at all. A row of an earlier hour (an import, a late callback)
-- writes a mark.
CREATE FUNCTION kpi_mark_call() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kpi_dirty_hours (tenant_id, hour)
    SELECT DISTINCT t, date_trunc('hour', at, 'UTC')
    FROM (VALUES (NEW.tenant_id, NEW.started_at)) AS n(t, at)
    WHERE kpi_hour_needs_mark(at)
    UNION
    SELECT o.t, date_trunc('hour', o.at, 'UTC')
    FROM (SELECT OLD.tenant_id, OLD.started_at WHERE TG_OP = 'UPDATE') AS o(t, at)
    WHERE kpi_hour_needs_mark(o.at);
    -- A call whose agent changed (its agent was deleted) moves its tool
    -- executions to another agent's figures.
    IF TG_OP = 'UPDATE' AND NEW.agent_id IS DISTINCT FROM OLD.agent_id THEN
        INSERT INTO kpi_dirty_hours (tenant_id, hour)
        SELECT DISTINCT tenant_id, date_trunc('hour', created_at, 'UTC')
        FROM tool_executions
        WHERE call_id = NEW.id AND kpi_hour_needs_mark(created_at);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION kpi_mark_tool_execution() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kpi_dirty_hours (tenant_id, hour)
    SELECT DISTINCT t, date_trunc('hour', at, 'UTC')
    FROM (VALUES (NEW.tenant_id, NEW.created_at)) AS n(t, at)
    WHERE kpi_hour_needs_mark(at)
    UNION
    SELECT o.t, date_trunc('hour', o.at, 'UTC')
    FROM (SELECT OLD.tenant_id, OLD.created_at WHERE TG_OP = 'UPDATE') AS o(t, at)
    WHERE kpi_hour_needs_mark(o.at);
    RETURN NULL;
END
$$;

CREATE TRIGGER call_sessions_kpi_insert AFTER INSERT ON call_sessions FOR EACH ROW
    WHEN (kpi_hour_needs_mark(NEW.started_at))
    EXECUTE FUNCTION kpi_mark_call();
-- A call's tool executions are created after it rang: when its own hour
-- needs no mark, neither do theirs.
CREATE TRIGGER call_sessions_kpi_update AFTER UPDATE ON call_sessions FOR EACH ROW
    WHEN ((kpi_hour_needs_mark(OLD.started_at) OR kpi_hour_needs_mark(NEW.started_at))
          AND (OLD.tenant_id, OLD.agent_id, OLD.status, OLD.direction, OLD.started_at,
               OLD.answered_at, OLD.ended_at, OLD.duration_seconds)
              IS DISTINCT FROM
              (NEW.tenant_id, NEW.agent_id, NEW.status, NEW.direction, NEW.started_at,
               NEW.answered_at, NEW.ended_at, NEW.duration_seconds))
    EXECUTE FUNCTION kpi_mark_call();
CREATE TRIGGER call_sessions_kpi_delete AFTER DELETE ON call_sessions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION kpi_mark_deleted_calls();

CREATE TRIGGER tool_executions_kpi_insert AFTER INSERT ON tool_executions FOR EACH ROW
    WHEN (kpi_hour_needs_mark(NEW.created_at))
    EXECUTE FUNCTION kpi_mark_tool_execution();
CREATE TRIGGER tool_executions_kpi_update AFTER UPDATE ON tool_executions FOR EACH ROW
    WHEN ((kpi_hour_needs_mark(OLD.created_at) OR kpi_hour_needs_mark(NEW.created_at))
          AND (OLD.tenant_id, OLD.call_id, OLD.status, OLD.latency_ms, OLD.created_at)
              IS DISTINCT FROM
              (NEW.tenant_id, NEW.call_id, NEW.status, NEW.latency_ms, NEW.created_at))
    EXECUTE FUNCTION kpi_mark_tool_execution();
CREATE TRIGGER tool_executions_kpi_delete AFTER DELETE ON tool_executions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION kpi_mark_deleted_tool_executions();
