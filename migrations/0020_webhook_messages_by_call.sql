-- A call's event webhook messages hold its numbers (`data.from`, `data.to`):
-- deleting the call (retention, erasure, DELETE /internal/calls) deletes
-- them too, found through this index (docs/decisions/0049-retention-purge.md).
CREATE INDEX webhook_messages_call_idx ON webhook_messages (tenant_id, (data->>'call_id'))
    WHERE data ? 'call_id';
