//! Code more than one binary needs: settings, telemetry, the HTTP scaffolding
//! every binary serves (health, readiness, metrics, request ids, shutdown),
//! auth (JWT claims and guards), crypto for secrets at rest,
//! Postgres access and migrations, the NATS subjects and message types, and
//! the lifecycle of a tool execution (`tool_executions`), and the voice
//! runtime's NATS contract as an AsyncAPI document (`asyncapi`).
//!
//! Code used by a single binary lives in that binary.

pub mod asyncapi;
pub mod auth;
pub mod automation;
pub mod calls;
pub mod config;
pub mod consumer;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod kpi_rollups;
pub mod nats;
pub mod offboarding;
pub mod redaction;
pub mod retention;
pub mod service;
pub mod shutdown;
pub mod ssrf;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tool_executions;
pub mod trace;
pub mod twilio;
pub mod webhooks;

/// Installs the process-wide crypto providers (rustls and jsonwebtoken).
///
/// Both libraries panic at the first TLS connection or token operation when
/// more than one backend is compiled in and none was chosen; every `main` and
/// the test harnesses call this first. Calling it twice is harmless.
pub fn install_crypto_providers() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}
