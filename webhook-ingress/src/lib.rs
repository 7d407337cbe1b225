//! The webhook-ingress binary: public Twilio webhook ingress.
//!
//! `webhooks` (handlers) -> `routing` (phone numbers) -> `store` (group
//! commit of session + outbox event) -> `publisher` (JetStream, after the
//! commit); `twiml` renders the answers.

pub mod config;
pub mod publisher;
pub mod routing;
pub mod startup;
pub mod store;
pub mod twiml;
pub mod webhooks;
