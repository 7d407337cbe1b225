//! The internal management API: tenants, agents and versions,
//! phone numbers, tools, integrations, legal holds, call deletion, tenant
//! off-boarding, audit log, webhook endpoints,
//! and the tenant-isolation matrix over all of them.

mod agents;
mod audit_log;
mod concurrency;
mod isolation;
mod legal_holds;
mod offboarding;
mod phone_numbers;
mod retention;
mod support;
mod tenants;
mod tools;
mod webhook_endpoints;
