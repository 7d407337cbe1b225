//! The dispatch-worker binary: owns the call lifecycle and runtime dispatches.
//!
//! `lifecycle` (calls.* -> sessions, dispatches, handoffs, recordings),
//! `publish_records` (its handoff publishes, recorded together),
//! `runtime_events` (runtime.events.* -> timeline, transcript), `relay`
//! (the outbox), `expiry` (unclaimed dispatches), `bus_recovery` (streams
//! NATS lost, made again, and their pending handoffs published again),
//! `kpi_rollups` (the client KPIs' rollups), `retention` (the retention
//! purge), `periodic` (the loop of those two). The JetStream consume loop
//! is `shared::consumer`.

pub mod bus_recovery;
pub mod config;
pub mod expiry;
pub mod kpi_rollups;
pub mod lifecycle;
pub mod periodic;
pub mod publish_records;
pub mod relay;
pub mod retention;
pub mod runtime_events;
pub mod startup;
