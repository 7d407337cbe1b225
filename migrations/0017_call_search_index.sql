-- GET /client/calls?q= finds a tenant's calls by part of the caller's or
-- the callee's number. A LIKE '%...%' cannot use a B-tree, so without this
-- index a search scans every call of the tenant, and a miss (nothing
-- matches) is the slowest case. Trigrams make the cost follow the matches.
--
-- tenant_id leads the index (btree_gin) so one tenant's search never walks
-- another tenant's entries. GIN's pending list (fastupdate, the default)
-- stays on: an insert appends its entries there and autovacuum (or the
-- insert that finds the list full) merges them in bulk. Inserting each
-- call's thirty-odd trigram entries into the index directly cost a quarter
-- of the inbound path's throughput. A CallSid is found through
-- call_sessions_call_sid_key.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;

CREATE INDEX call_sessions_numbers_trgm_idx ON call_sessions
    USING gin (tenant_id, from_number gin_trgm_ops, to_number gin_trgm_ops);
