//! Tests of the dispatch-worker: the lifecycle in-process, and end to end
//! with the real dispatch-worker binary (killed and restarted), the ingress
//! and the api, against a fresh database and the local NATS with a unique
//! prefix per test.

mod bus;
mod e2e;
mod helpers;
mod lifecycle;
mod plans;
mod startup;
