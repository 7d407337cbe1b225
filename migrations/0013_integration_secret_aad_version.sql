-- Which associated data an integration's secret is sealed with:
-- 1 = `integrations:<id>`, 2 = `integrations:<tenant_id>:<id>`
-- (shared::automation::integration_secret_aad). The api reseals version 1
-- rows at start-up (docs/decisions/0040-secrets-bound-to-tenant-and-resealed.md).
-- The default stays 1 so that a row an older api writes during a rollout is
-- marked for the reseal too; the current api writes 2.
ALTER TABLE integrations
    ADD COLUMN secret_aad_version smallint NOT NULL DEFAULT 1
        CHECK (secret_aad_version IN (1, 2));
