//! The authenticated HTTP API for ops staff (`/internal`), tenants' staff
//! (`/client`) and the voice runtime (dispatch claims, tool calls).
//!
//! Grouped by who calls it: `auth` (login, first admin, tokens),
//! `management` (ops staff's resources), `client` (tenants' staff's reads),
//! `runtime` (the voice runtime's claims), `automation` (tool calls through
//! the automation-worker), and `http` for what every route shares (the error
//! type, extractors, paging, size caps, the OpenAPI document). Each resource
//! module owns its routes, handlers, SQL and the types it speaks; `startup`
//! wires them together.

pub mod audit;
pub mod auth;
pub mod automation;
pub mod client;
pub mod config;
pub mod http;
pub mod management;
pub mod reseal;
pub mod runtime;
pub mod startup;
pub mod state;
#[cfg(feature = "test-support")]
pub mod testing;
