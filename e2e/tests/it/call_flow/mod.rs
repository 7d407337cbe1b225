//! The inbound call flow: signed webhooks through the ingress, the
//! dispatch-worker (in-process, or the real binary killed and restarted)
//! and the api's claim.

mod bus;
mod capacity;
mod claim;
mod lifecycle;
mod plans;
pub mod world;
