//! What the voice runtime calls over HTTP: claiming a dispatched call
//! ([`dispatches`]). Its tool calls are in `crate::automation`.

pub mod dispatches;
