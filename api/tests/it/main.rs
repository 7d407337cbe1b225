//! Integration tests of the api: the real router on a random port, against a
//! fresh Postgres database per test (`#[sqlx::test]`) and the local NATS
//! server with a unique subject prefix.

mod auth;
mod helpers;
mod runtime_dispatches;
