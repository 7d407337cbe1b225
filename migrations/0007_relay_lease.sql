-- The relay leases the rows it is about to publish instead of holding row
-- locks while it waits for NATS acks (up to seconds): a lock held that long
-- made the dispatch-worker's update of the same event wait behind it. A
-- lease taken in one short statement keeps other relay instances off the
-- rows without blocking anyone; an expired lease (a relay that died
-- mid-round) frees them again.
ALTER TABLE call_events ADD COLUMN relay_lease_until timestamptz;
