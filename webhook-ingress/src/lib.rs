//! The webhook-ingress binary: public Twilio webhook ingress.

pub mod config;
pub mod startup;
