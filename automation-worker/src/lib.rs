//! The automation-worker binary: runs tool calls and n8n integration tests.

pub mod config;
pub mod startup;
