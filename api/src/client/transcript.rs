//! `GET /client/calls/{call_id}/transcript`: the call's transcript segments
//! in order, as JSON or (`?format=text`) as plain text.

use std::fmt::Write as _;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::ensure_call;
use super::reads::ClientRead;
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_transcript))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TranscriptQuery {
    /// `json` (default) or `text`.
    pub format: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Transcript {
    pub call_id: Uuid,
    /// Oldest first (by `start_ms`).
    pub segments: Vec<Segment>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Segment {
    pub id: Uuid,
    /// `caller` or `agent`.
    pub speaker: String,
    pub text: String,
    /// Offsets from the start of the media stream.
    pub start_ms: i32,
    pub end_ms: i32,
    pub occurred_at: DateTime<Utc>,
    /// Personal data in `text` was replaced by placeholders (`[PHONE]`,
    /// `[EMAIL]`, `[CARD]`, `[SSN]`, `[IBAN]`) before it was stored: the
    /// tenant's storage mode was `everything_except_pii`.
    pub redacted: bool,
}

/// The transcript of one call of the tenant.
#[utoipa::path(get, path = "/client/calls/{call_id}/transcript", tag = "client",
    params(("call_id" = Uuid, Path), TranscriptQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Transcript,
         description = "JSON; with ?format=text, text/plain lines `[mm:ss] Caller: text`"),
        (status = 400, description = "bad format", body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 404, description = "no such call in the token's tenant", body = shared::error::ErrorBody),
    ))]
async fn get_transcript(
    ClientRead { claims, pool, .. }: ClientRead,
    Path(call_id): Path<Uuid>,
    Query(query): Query<TranscriptQuery>,
) -> AppResult<Response> {
    let as_text = match query.format.as_deref().map(str::trim) {
        None | Some("" | "json") => false,
        Some("text") => true,
        Some(_) => return Err(AppError::bad_request("format must be json or text")),
    };
    ensure_call(&pool, claims.tenant_id, call_id).await?;
    let segments: Vec<Segment> = sqlx::query_as(
        "SELECT id, speaker, text, start_ms, end_ms, occurred_at, redacted
         FROM transcript_segments WHERE tenant_id = $1 AND call_id = $2
         ORDER BY start_ms, end_ms, id",
    )
    .bind(claims.tenant_id)
    .bind(call_id)
    .fetch_all(&pool)
    .await?;
    if as_text {
        Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            as_plain_text(&segments),
        )
            .into_response())
    } else {
        Ok(Json(Transcript { call_id, segments }).into_response())
    }
}

/// One line per segment: `[mm:ss] Caller: text` (hours when needed).
pub fn as_plain_text(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        let secs = s.start_ms / 1000;
        let (h, m, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
        let speaker = if s.speaker == "agent" {
            "Agent"
        } else {
            "Caller"
        };
        let stamp = if h > 0 {
            format!("{h}:{m:02}:{sec:02}")
        } else {
            format!("{m:02}:{sec:02}")
        };
        // Writing into a String cannot fail.
        let _ = writeln!(out, "[{stamp}] {speaker}: {}", s.text.trim());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_lines() {
        let seg = |speaker: &str, start_ms, text: &str| Segment {
            id: Uuid::nil(),
            speaker: speaker.into(),
            text: text.into(),
            start_ms,
            end_ms: start_ms,
            occurred_at: Utc::now(),
            redacted: false,
        };
        let text = as_plain_text(&[
            seg("agent", 0, "Hello"),
            seg("caller", 65_500, " Hi "),
            seg("agent", 3_600_000, "Still there?"),
        ]);
        assert_eq!(
            text,
            "[00:00] Agent: Hello\n[01:05] Caller: Hi\n[1:00:00] Agent: Still there?\n"
        );
    }
}
