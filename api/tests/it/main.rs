//! Integration tests of the api: the real router on a random port, against a
//! fresh Postgres database per test (`#[sqlx::test]`) and the local NATS
//! server with a unique subject prefix.

mod access_log;
mod auth;
mod automation;
mod bus;
mod client;
mod helpers;
mod mgmt;
mod plans;
mod runtime_dispatches;
mod secrets;
mod size_caps;
mod startup_checks;
