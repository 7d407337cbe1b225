//! A reference voice runtime: the smallest complete program that joins the
//! platform the way a real runtime does, for runtime teams to read and copy.
//!
//! 1. It asks the api whose token it holds (`GET /auth/me`): the tenant it
//!    serves.
//! 2. It consumes `runtime.handoff_requested.<tenant_id>` through its own
//!    durable JetStream consumer, connected as the NATS user `runtime`
//!    (deploy/nats/nats.conf gives that user nothing more).
//! 3. For each handoff it claims the dispatch (`POST
//!    /internal/runtime/dispatches/claim`); only the winner of the claim
//!    talks to the caller, so a handoff delivered twice is handled once.
//! 4. It holds a scripted conversation ([`conversation`]): transcript
//!    segments, a tool call through the automation gateway when the agent
//!    has a tool, and `call.ended`, each published to
//!    `runtime.events.<tenant_id>.<call_id>`.
//!
//! Every message is described in the AsyncAPI document (`/asyncapi.json`,
//! `docs/asyncapi.json`); docs/runtime.md walks through the whole contract.

pub mod config;
pub mod conversation;
pub mod handoffs;
pub mod platform;

pub use handoffs::run;
