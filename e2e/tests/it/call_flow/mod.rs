//! The inbound call flow: signed webhooks through the ingress, the
//! dispatch-worker (in-process, or the real binary killed and restarted)
//! and the api's claim; the reference runtime taking a call end to end.

mod bus;
mod capacity;
mod claim;
mod lifecycle;
mod plans;
mod reference_runtime;
mod storage_modes;
pub mod world;
