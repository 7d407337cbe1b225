//! Integration tests of the ingress: the real router on a random port,
//! a fresh database per test and the local NATS with a unique prefix.

mod helpers;
mod startup_checks;
mod webhooks;
