-- Admission reads a counter of live calls, kept under the same row lock,
-- instead of counting them (0015 counted, per admission group, every live
-- call of the tenant and of the agent: at a thousand calls a second, about
-- a thousand index entries and rows per group, with the lock held).
-- See docs/decisions/0053-admission-reads-live-call-counters.md.
--
-- `live_calls` is kept only while the row has a limit: a tenant or agent
-- without one locks and writes nothing per call, as before.
--   * Set:     a limit set where there was none starts it from a count.
--   * Admit:   the ingress's group upsert adds the calls it inserted live
--              (in the same statement, under the lock admission took).
--   * Release: a call that stops being live, or is deleted live, takes
--              itself off (row triggers below).
--   * Recount: `recount_live_calls(tenant)`, run by the dispatch-worker's
--              expiry loop, recounts under the lock. Only a limit set in the same
--              instant as a call rings or ends can leave the counter off,
--              and only until then.
-- Locks are taken in id order, tenants before agents, as admission takes
-- them, so two transactions never wait on each other in a cycle.

ALTER TABLE tenants ADD COLUMN live_calls integer NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN live_calls integer NOT NULL DEFAULT 0;

-- What a counter counts: a tenant's (or one of its agents') live calls,
-- through call_sessions_live_idx. PL/pgSQL, planned once per connection.
CREATE FUNCTION tenant_live_calls(p_tenant uuid) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*) FROM call_sessions s WHERE s.tenant_id = p_tenant AND s.live);
END $$;

CREATE FUNCTION agent_live_calls(p_tenant uuid, p_agent uuid) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*) FROM call_sessions s
            WHERE s.tenant_id = p_tenant AND s.agent_id = p_agent AND s.live);
END $$;

CREATE FUNCTION tenant_live_calls_start() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.live_calls := tenant_live_calls(NEW.id);
    RETURN NEW;
END $$;

CREATE TRIGGER tenants_live_calls_start BEFORE UPDATE OF max_concurrent_calls ON tenants
    FOR EACH ROW WHEN (OLD.max_concurrent_calls IS NULL AND NEW.max_concurrent_calls IS NOT NULL)
    EXECUTE FUNCTION tenant_live_calls_start();

CREATE FUNCTION agent_live_calls_start() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.live_calls := agent_live_calls(NEW.tenant_id, NEW.id);
    RETURN NEW;
END $$;

CREATE TRIGGER agents_live_calls_start BEFORE UPDATE OF max_concurrent_calls ON agents
    FOR EACH ROW WHEN (OLD.max_concurrent_calls IS NULL AND NEW.max_concurrent_calls IS NOT NULL)
    EXECUTE FUNCTION agent_live_calls_start();

-- A call that stops counting. PL/pgSQL: its statements are planned once
-- per connection.
CREATE FUNCTION live_call_released() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenants SET live_calls = live_calls - 1
    WHERE id = OLD.tenant_id AND max_concurrent_calls IS NOT NULL;
    IF OLD.agent_id IS NOT NULL THEN
        UPDATE agents SET live_calls = live_calls - 1
        WHERE id = OLD.agent_id AND max_concurrent_calls IS NOT NULL;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER call_sessions_live_released AFTER UPDATE OF live ON call_sessions
    FOR EACH ROW WHEN (OLD.live AND NOT NEW.live)
    EXECUTE FUNCTION live_call_released();

CREATE TRIGGER call_sessions_live_deleted AFTER DELETE ON call_sessions
    FOR EACH ROW WHEN (OLD.live)
    EXECUTE FUNCTION live_call_released();

-- Locks the counters the release of `p_call_ids` will write, in admission's
-- order, before a statement releases calls of several tenants at once.
CREATE FUNCTION lock_live_call_counters(p_call_ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tenants uuid[];
    v_agents  uuid[];
BEGIN
    -- Primary-key reads per call, as scalar subqueries: a join with the
    -- calls (a lateral one too) can be planned as a scan of the table while
    -- it is new (see 0037).
    SELECT array_agg(DISTINCT t), array_agg(DISTINCT a) INTO v_tenants, v_agents
    FROM (
        SELECT (SELECT s.tenant_id FROM call_sessions s WHERE s.id = c.id AND s.live) AS t,
               (SELECT s.agent_id FROM call_sessions s WHERE s.id = c.id AND s.live) AS a
        FROM unnest(p_call_ids) AS c(id)
    ) x;
    PERFORM 1 FROM tenants WHERE id = ANY (v_tenants) AND max_concurrent_calls IS NOT NULL
    ORDER BY id FOR NO KEY UPDATE;
    PERFORM 1 FROM agents WHERE id = ANY (v_agents) AND max_concurrent_calls IS NOT NULL
    ORDER BY id FOR NO KEY UPDATE;
END $$;

-- 0015's admission, reading the counters under the lock instead of
-- counting.
CREATE OR REPLACE FUNCTION admit_inbound_calls(p_call_sids text[], p_tenant_ids uuid[], p_agent_ids uuid[])
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
    v_live          integer;
    v_t             integer;
    v_a             integer;
    v_in            record;
BEGIN
    FOR v_id IN SELECT DISTINCT t FROM unnest(p_tenant_ids) AS t WHERE t IS NOT NULL ORDER BY 1 LOOP
        SELECT max_concurrent_calls INTO v_limit FROM tenants WHERE id = v_id;
        CONTINUE WHEN v_limit IS NULL;
        SELECT max_concurrent_calls, live_calls INTO v_limit, v_live
        FROM tenants WHERE id = v_id FOR NO KEY UPDATE;
        CONTINUE WHEN v_limit IS NULL;
        v_tenants := v_tenants || v_id;
        v_tenant_limits := v_tenant_limits || v_limit;
        v_tenant_live := v_tenant_live || v_live;
    END LOOP;
    FOR v_id IN SELECT DISTINCT a FROM unnest(p_agent_ids) AS a WHERE a IS NOT NULL ORDER BY 1 LOOP
        SELECT max_concurrent_calls INTO v_limit FROM agents WHERE id = v_id;
        CONTINUE WHEN v_limit IS NULL;
        SELECT max_concurrent_calls, live_calls INTO v_limit, v_live
        FROM agents WHERE id = v_id FOR NO KEY UPDATE;
        CONTINUE WHEN v_limit IS NULL;
        v_agents := v_agents || v_id;
        v_agent_limits := v_agent_limits || v_limit;
        v_agent_live := v_agent_live || v_live;
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

-- 0015's expiry and sweep, taking the counters' locks in order first.
CREATE OR REPLACE FUNCTION expire_runtime_dispatches() RETURNS TABLE (expired bigint, released bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_calls   uuid[];
    v_call_id uuid;
BEGIN
    WITH due AS (
        UPDATE runtime_dispatches
        SET status = 'expired', join_token_ciphertext = NULL, join_token_nonce = NULL,
            updated_at = now()
        WHERE status = 'pending' AND expires_at < now()
        RETURNING call_id
    )
    SELECT array_agg(call_id) INTO v_calls FROM due;
    expired := coalesce(cardinality(v_calls), 0);
    released := 0;
    IF expired > 0 THEN
        PERFORM lock_live_call_counters(v_calls);
        FOREACH v_call_id IN ARRAY v_calls LOOP
            UPDATE call_sessions
            SET live = false, released_at = now(), release_reason = 'dispatch_expired',
                updated_at = now()
            WHERE id = v_call_id AND live;
            IF FOUND THEN
                released := released + 1;
            END IF;
        END LOOP;
    END IF;
    RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION release_overdue_calls(p_max_duration interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_calls    uuid[];
    v_id       uuid;
    v_released bigint := 0;
BEGIN
    SELECT array_agg(id) INTO v_calls FROM (
        SELECT s.id FROM tenants t
        CROSS JOIN LATERAL (
            SELECT c.id FROM call_sessions c
            WHERE c.tenant_id = t.id AND c.live AND c.started_at < now() - p_max_duration
            LIMIT 1000 -- also keeps the subquery a lookup per tenant, not a join
        ) s
        LIMIT 1000
    ) due;
    IF v_calls IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM lock_live_call_counters(v_calls);
    FOREACH v_id IN ARRAY v_calls LOOP
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

-- Recounts a tenant's counters in use, each under its row's lock (so the
-- count sees every admission and release committed before it, and none is
-- in flight): the tenant's, then its agents' in id order. Returns how many
-- were off. One tenant per call, so that no transaction holds many
-- tenants' admissions up at once.
CREATE FUNCTION recount_live_calls(p_tenant uuid) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id    uuid;
    v_kept  integer;
    v_count integer;
    v_off   integer := 0;
BEGIN
    SELECT live_calls INTO v_kept FROM tenants
    WHERE id = p_tenant AND max_concurrent_calls IS NOT NULL FOR NO KEY UPDATE;
    IF FOUND THEN
        v_count := tenant_live_calls(p_tenant);
        IF v_count <> v_kept THEN
            UPDATE tenants SET live_calls = v_count WHERE id = p_tenant;
            v_off := v_off + 1;
        END IF;
    END IF;
    FOR v_id IN
        SELECT id FROM agents WHERE tenant_id = p_tenant AND max_concurrent_calls IS NOT NULL ORDER BY id
    LOOP
        SELECT live_calls INTO v_kept FROM agents
        WHERE id = v_id AND max_concurrent_calls IS NOT NULL FOR NO KEY UPDATE;
        CONTINUE WHEN NOT FOUND;
        v_count := agent_live_calls(p_tenant, v_id);
        IF v_count <> v_kept THEN
            UPDATE agents SET live_calls = v_count WHERE id = v_id;
            v_off := v_off + 1;
        END IF;
    END LOOP;
    RETURN v_off;
END
$$;

-- The counters of the limits already set.
UPDATE tenants SET live_calls = tenant_live_calls(id) WHERE max_concurrent_calls IS NOT NULL;
UPDATE agents SET live_calls = agent_live_calls(tenant_id, id) WHERE max_concurrent_calls IS NOT NULL;
