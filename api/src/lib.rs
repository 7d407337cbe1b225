//! The authenticated HTTP API for ops staff (`/internal`), tenants' staff
//! (`/client`) and the voice runtime (dispatch claims, tool calls).
//!
//! One module per resource or flow, each owning its routes, handlers, SQL and
//! the types it speaks; `startup` wires them together.

pub mod auth_routes;
pub mod config;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod pagination;
pub mod runtime_dispatches;
pub mod startup;
pub mod state;
