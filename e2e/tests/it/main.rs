//! End-to-end tests of the binaries together, each against a fresh
//! database (`#[sqlx::test]`) and the local NATS under a unique subject
//! prefix: the call flow (ingress, dispatch-worker, the api's claim) and
//! tool calls (api, automation-worker, a fake n8n); tenant event webhooks
//! (the triggers, the automation-worker, a receiver that verifies them).

mod automation;
mod call_flow;
mod webhooks;
