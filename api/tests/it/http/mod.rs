//! What every route shares: the access log, size caps, the OpenAPI document.

mod access_log;
mod openapi;
mod size_caps;
