-- Storage modes and tenant off-boarding (docs/decisions/0050-storage-modes.md,
-- 0051-tenant-offboarding.md).

-- How much of a call the tenant lets us keep. Applies to what is written
-- after it changes; nothing already stored is rewritten.
ALTER TABLE tenants
    ADD COLUMN data_storage text NOT NULL DEFAULT 'everything'
        CHECK (data_storage IN ('everything', 'everything_except_pii', 'basic_attributes_only')),
    -- Set when the tenant's off-boarding starts: its numbers stop routing,
    -- no hold can be placed, and its rows are deleted in batches.
    ADD COLUMN offboarding_at timestamptz;

-- The mode the call was written under, so a reader knows what it is
-- looking at (numbers masked, payloads left out).
ALTER TABLE call_sessions
    ADD COLUMN data_storage text NOT NULL DEFAULT 'everything'
        CHECK (data_storage IN ('everything', 'everything_except_pii', 'basic_attributes_only'));

-- True when personal data was replaced by a placeholder before the row
-- was written.
ALTER TABLE transcript_segments ADD COLUMN redacted boolean NOT NULL DEFAULT false;

-- One row per off-boarding: no foreign key, it outlives its tenant so the
-- progress (and the end) can still be read.
CREATE TABLE tenant_offboardings (
    tenant_id    uuid PRIMARY KEY,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- What went so far, as shared::retention::Purged counts.
    deleted      jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
