//! `GET /client/calls/{call_id}/recording`: the call's recording metadata.
//! The media URL is returned only when `RECORDINGS_EXPOSE_URL=true`;
//! otherwise `url_available` says one is stored.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::ensure_call;
use super::reads::ClientRead;
use crate::http::error::AppResult;
use crate::http::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_recording))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingInfo {
    pub call_id: Uuid,
    /// At least one recording exists for the call.
    pub has_recording: bool,
    /// Whether this deployment returns media URLs (`RECORDINGS_EXPOSE_URL`).
    pub urls_exposed: bool,
    /// Oldest first; a call can be recorded more than once.
    pub recordings: Vec<Recording>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Recording {
    pub sid: String,
    pub status: String,
    pub duration_seconds: Option<i32>,
    pub channels: Option<i32>,
    /// A media URL is stored for this recording.
    pub url_available: bool,
    /// Only when `RECORDINGS_EXPOSE_URL=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct RecordingRow {
    recording_sid: String,
    url: Option<String>,
    duration_seconds: Option<i32>,
    channels: Option<i32>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Recording metadata of one call of the tenant (200 with
/// `has_recording: false` when the call has none).
#[utoipa::path(get, path = "/client/calls/{call_id}/recording", tag = "client",
    params(("call_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RecordingInfo),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 404, description = "no such call in the token's tenant", body = shared::error::ErrorBody),
    ))]
async fn get_recording(
    State(state): State<AppState>,
    ClientRead { claims, pool, .. }: ClientRead,
    Path(call_id): Path<Uuid>,
) -> AppResult<Json<RecordingInfo>> {
    ensure_call(&pool, claims.tenant_id, call_id).await?;
    let rows: Vec<RecordingRow> = sqlx::query_as(
        "SELECT recording_sid, url, duration_seconds, channels, status, created_at, updated_at
         FROM recordings WHERE tenant_id = $1 AND call_id = $2
         ORDER BY created_at, recording_sid",
    )
    .bind(claims.tenant_id)
    .bind(call_id)
    .fetch_all(&pool)
    .await?;
    let expose = state.settings.recordings_expose_url;
    let recordings: Vec<Recording> = rows
        .into_iter()
        .map(|r| Recording {
            url_available: r.url.as_deref().is_some_and(|u| !u.is_empty()),
            url: r.url.filter(|u| expose && !u.is_empty()),
            sid: r.recording_sid,
            status: r.status,
            duration_seconds: r.duration_seconds,
            channels: r.channels,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect();
    Ok(Json(RecordingInfo {
        call_id,
        has_recording: !recordings.is_empty(),
        urls_exposed: expose,
        recordings,
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::Config;

    #[test]
    fn expose_url_setting_defaults_to_false_and_parses() {
        let parse = |args: &[&str]| Config::try_parse_from(args).map(|c| c.recordings_expose_url);
        assert!(!parse(&["api"]).expect("default"));
        assert!(parse(&["api", "--recordings-expose-url", "true"]).expect("true"));
        assert!(!parse(&["api", "--recordings-expose-url", "false"]).expect("false"));
        assert!(parse(&["api", "--recordings-expose-url", "maybe"]).is_err());
    }
}
