//! The authenticated HTTP API for ops staff (`/internal`), tenants' staff
//! (`/client`) and the voice runtime (dispatch claims, tool calls).
//!
//! One module per resource or flow, each owning its routes, handlers, SQL and
//! the types it speaks; `startup` wires them together.

pub mod agents;
pub mod audit_log;
pub mod auth_routes;
pub mod automation;
pub mod calls_admin;
pub mod client;
pub mod client_addr;
pub mod config;
pub mod error;
pub mod extract;
pub mod integrations;
pub mod legal_holds;
pub mod login_throttle;
pub mod management;
pub mod openapi;
pub mod pagination;
pub mod phone_numbers;
pub mod reseal;
pub mod runtime_dispatches;
pub mod size_caps;
pub mod startup;
pub mod state;
pub mod tenants;
pub mod tools;
