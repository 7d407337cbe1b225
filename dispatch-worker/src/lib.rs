//! The dispatch-worker binary: owns the call lifecycle and runtime dispatches.
//!
//! `lifecycle` (calls.* -> sessions, dispatches, handoffs, recordings),
//! `runtime_events` (runtime.events.* -> timeline, transcript), `relay`
//! (the outbox), `expiry` (unclaimed dispatches), `consumer` (the shared
//! JetStream consume loop), `bus_recovery` (streams NATS lost, made again,
//! and their pending handoffs published again), `kpi_rollups` (the client
//! KPIs' rollups).

pub mod bus_recovery;
pub mod config;
pub mod expiry;
pub mod kpi_rollups;
pub mod lifecycle;
pub mod relay;
pub mod retention;
pub mod runtime_events;
pub mod startup;
