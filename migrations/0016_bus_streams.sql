-- The creation time of each JetStream stream as the dispatch-workers last
-- saw it. A stream created anew since then has lost its messages (NATS lost
-- its store); kept here, not in memory, so a worker that starts after the
-- loss (a power cut takes NATS and the workers down together) notices it.
CREATE TABLE bus_streams (
    name       text PRIMARY KEY,
    -- Nanoseconds since the epoch, as NATS reports it (timestamptz keeps
    -- only microseconds).
    created_ns bigint NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
