//! The automation-worker binary: runs tool calls and n8n integration tests.
//!
//! It answers two NATS request subjects in a queue group (so instances scale
//! out): `automation.integration.test` ([`probe`]) and
//! `automation.tool.execute` ([`execute`]); every outbound call goes through
//! the SSRF guard ([`ssrf`]) and the retrying client ([`outbound`]); the
//! [`reaper`] closes executions whose worker died. It also delivers the
//! tenants' event webhooks ([`webhooks`]): a relay from Postgres into the
//! `WEBHOOKS` stream, a consumer of it, and the api's test requests
//! (`webhooks.test`).

pub mod config;
pub mod execute;
pub mod outbound;
pub mod probe;
pub mod reaper;
pub mod ssrf;
pub mod startup;
pub mod webhooks;
