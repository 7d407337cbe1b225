//! The client surface (`/client/*`): what a tenant's own staff read every
//! day. Read-only, open to any valid token, and always scoped to the token's
//! tenant: another tenant's call answers 404 exactly like a missing one.
//!
//! One module per endpoint group: `kpis` (the dashboard figures), `calls`
//! (the list and one call with its timeline), `transcript`, `recording`,
//! `concurrency` (live calls against the tenant's limit).
//! Every handler reads through [`reads::ClientRead`]: the surface's own
//! pool, a statement timeout, and a per-tenant share.
//! This module holds the query-parameter parsing they share, so every bad
//! value is a 400 that names its parameter.

pub mod calls;
pub mod concurrency;
pub mod kpi_plan;
pub mod kpis;
pub mod reads;
pub mod recording;
pub mod transcript;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(kpis::routes())
        .merge(calls::routes())
        .merge(concurrency::routes())
        .merge(transcript::routes())
        .merge(recording::routes())
}

/// Every status Twilio gives a call, and `rejected` (refused at ring time
/// for capacity), in the schema's CHECK order.
pub const CALL_STATUSES: [&str; 9] = [
    "queued",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "failed",
    "no-answer",
    "canceled",
    "rejected",
];

/// An RFC 3339 time from the query. A `+` offset that arrived unencoded
/// decodes as a space; that one case is repaired rather than refused.
pub(crate) fn parse_time(name: &str, value: Option<&str>) -> AppResult<Option<DateTime<Utc>>> {
    let Some(raw) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let parse = |s: &str| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
    parse(raw)
        .or_else(|err| match raw.rfind(' ') {
            Some(i) if i > 10 => parse(&format!("{}+{}", &raw[..i], &raw[i + 1..])),
            _ => Err(err),
        })
        .map(Some)
        .map_err(|_| {
            AppError::bad_request(format!(
                "{name} must be an RFC 3339 time such as 2026-11-25T00:00:00Z"
            ))
        })
}

pub(crate) fn parse_uuid(name: &str, value: Option<&str>) -> AppResult<Option<Uuid>> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| AppError::bad_request(format!("{name} must be a UUID")))
        })
        .transpose()
}

/// 404 unless the call exists in the tenant; the same answer either way.
pub(crate) async fn ensure_call(pool: &PgPool, tenant_id: Uuid, call_id: Uuid) -> AppResult<()> {
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM call_sessions WHERE id = $2 AND tenant_id IS NOT DISTINCT FROM $1)",
    )
    .bind(tenant_id)
    .bind(call_id)
    .fetch_one(pool)
    .await?;
    if found {
        Ok(())
    } else {
        Err(AppError::NotFound("call"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_name_the_parameter() {
        let t = parse_time("from", Some("2026-11-20T10:00:00+01:00"))
            .expect("valid")
            .expect("some");
        assert_eq!(t.to_rfc3339(), "2026-11-20T09:00:00+00:00");
        // An unencoded '+' arrives as a space.
        let t2 = parse_time("from", Some("2026-11-20T10:00:00 01:00"))
            .expect("repaired")
            .expect("some");
        assert_eq!(t, t2);
        assert_eq!(parse_time("from", None).expect("none"), None);
        let err = parse_time("to", Some("yesterday")).expect_err("bad");
        assert!(err.to_string().starts_with("to "), "{err}");
    }

    #[test]
    fn uuids() {
        assert!(parse_uuid("agent_id", Some("nope")).is_err());
        assert!(parse_uuid("agent_id", Some("")).expect("empty").is_none());
    }
}
