-- The dispatch-worker's batch and the record of a round of publishes, each
-- as statements over the whole batch instead of a loop of one-row
-- statements. A loop pays, for every row and every statement, an executor
-- start, the table's CHECK constraints read back from the catalog's text
-- and the statement's triggers set up: the largest share of Postgres's time
-- per inbound call. A statement over the batch pays them once.
--
-- Why the join methods are pinned (the function's SET clauses): the
-- planner takes a batch's array to hold ten rows whatever its length, and
-- a table never analyzed to be ten pages, so on a new deployment's empty
-- tables a hash join over a whole-table scan costs less than ten index
-- lookups, and pooled connections keep that generic plan as the tables
-- grow (docs/decisions/0037-plan-stable-keys.md). Every join here goes from
-- the batch to one row by a unique key, so a nested loop over the key's
-- index is the right plan at any table size; the SET clauses say so to the
-- planner for these statements only. They also keep the generic plan: one
-- made for each batch's arrays never looks costlier, so Postgres would
-- otherwise plan the statement anew for every batch.

CREATE OR REPLACE FUNCTION create_dispatches(
    p_event_ids    uuid[],
    p_tenant_ids   uuid[],
    p_dispatch_ids uuid[],
    p_ciphertexts  bytea[],
    p_nonces       bytea[],
    p_key_id       text,
    p_expires_at   timestamptz
) RETURNS SETOF call_events
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH processed AS (
        -- Events already processed (a redelivery) drop out here.
        UPDATE call_events e SET processed_at = now(), published_at = COALESCE(e.published_at, now())
        FROM unnest(p_event_ids, p_tenant_ids, p_dispatch_ids, p_ciphertexts, p_nonces)
            AS i(event_id, tenant_id, dispatch_id, ciphertext, nonce)
        WHERE e.id = i.event_id AND e.tenant_id IS NOT DISTINCT FROM i.tenant_id
          AND e.type = 'call.inbound' AND e.processed_at IS NULL
        RETURNING e.call_id, e.trace_id, i.dispatch_id, i.ciphertext, i.nonce
    ), calls AS (
        -- A call refused at ring time gets no runtime; nor does one that
        -- has its dispatch already (its handoff was made with it).
        SELECT p.call_id, p.trace_id, p.dispatch_id, p.ciphertext, p.nonce,
               s.tenant_id, s.call_sid, s.from_number, s.to_number, s.agent_id,
               s.agent_version_id IS NULL AS unversioned, v.id AS version_id, v.version
        FROM processed p
        JOIN call_sessions s ON s.id = p.call_id
        LEFT JOIN agents a ON a.id = s.agent_id AND a.tenant_id IS NOT DISTINCT FROM s.tenant_id
        LEFT JOIN agent_versions v ON v.id = COALESCE(s.agent_version_id, a.active_version_id)
        WHERE s.rejected_reason IS NULL
          AND NOT EXISTS (SELECT 1 FROM runtime_dispatches r WHERE r.call_id = p.call_id)
    ), dispatched AS (
        -- No ON CONFLICT: a dispatch made for the call since this
        -- statement's snapshot fails the batch, which is redelivered and
        -- then skips the call, rather than a handoff going out whose
        -- dispatch was never written. Each CTE below reads `calls` alone:
        -- a join between two CTEs would be a nested loop over the batch
        -- squared.
        INSERT INTO runtime_dispatches (id, tenant_id, call_id, agent_id, agent_version_id, status,
            join_token_ciphertext, join_token_nonce, join_token_key_id, expires_at)
        SELECT c.dispatch_id, c.tenant_id, c.call_id, c.agent_id, c.version_id, 'pending',
               c.ciphertext, c.nonce, p_key_id, p_expires_at
        FROM calls c
    ), pinned AS (
        -- The ingress pins a call's agent version as it rings; one whose
        -- agent had no active version then keeps the one it is dispatched
        -- with.
        UPDATE call_sessions s SET agent_version_id = c.version_id, updated_at = now()
        FROM calls c
        WHERE s.id = c.call_id AND c.unversioned AND c.version_id IS NOT NULL
    )
    INSERT INTO call_events AS h (id, tenant_id, call_id, type, idempotency_key, payload,
                                  needs_publish, occurred_at, trace_id)
    SELECT c.dispatch_id, c.tenant_id, c.call_id, 'runtime.handoff_requested',
           'runtime.handoff_requested',
           jsonb_build_object(
               'dispatch_id', c.dispatch_id, 'call_id', c.call_id,
               'call_sid', c.call_sid, 'tenant_id', c.tenant_id,
               'agent_id', c.agent_id, 'agent_version_id', c.version_id,
               'agent_version', c.version, 'from', c.from_number,
               'to', c.to_number, 'expires_at', p_expires_at),
           true, now(), c.trace_id
    FROM calls c
    ON CONFLICT (call_id, idempotency_key) DO NOTHING
    RETURNING h.*;
END
$$;

-- synchronous_commit is set for the transaction (is_local), which the SET
-- clauses, restored at the function's exit, leave alone.
CREATE OR REPLACE FUNCTION record_publishes(p_acked uuid[], p_failed uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE call_events e
    SET published_at = now(),
        processed_at = CASE WHEN e.type = 'runtime.handoff_requested' THEN now() ELSE e.processed_at END,
        publish_attempts = e.publish_attempts + 1,
        relay_lease_until = NULL
    FROM unnest(p_acked) AS a(id)
    WHERE e.id = a.id;
    UPDATE call_events e SET publish_attempts = e.publish_attempts + 1, relay_lease_until = NULL
    FROM unnest(p_failed) AS f(id)
    WHERE e.id = f.id;
END
$$;
