//! Integration tests of the api, laid out as `api/src` is: the real router
//! on a random port (`api::testing::spawn_app`), against a fresh Postgres
//! database per test (`#[sqlx::test]`) and the local NATS server with a
//! unique subject prefix.

mod auth;
mod automation;
mod client;
mod http;
mod management;
mod runtime;
mod startup_checks;
