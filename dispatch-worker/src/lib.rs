//! The dispatch-worker binary: owns the call lifecycle and runtime dispatches.

pub mod config;
pub mod startup;
