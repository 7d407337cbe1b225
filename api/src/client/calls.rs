//! `GET /client/calls` (the tenant's calls, newest first, keyset pages) and
//! `GET /client/calls/{call_id}` (one call with its agent, version,
//! durations and timeline).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::redaction::DataStorage;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::ClientRead;
use super::{CALL_STATUSES, parse_time, parse_uuid};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page, PageRequest};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calls))
        .routes(routes!(get_call))
}

/// Longest `q` after normalisation (E.164 has at most 15 digits and a `+`).
const MAX_Q_CHARS: usize = 16;
/// Shortest number part `q` may be: the search index works on trigrams, and
/// one or two digits would match most of a tenant's calls anyway.
const MIN_Q_CHARS: usize = 3;
/// Items of each kind in a call's timeline; more is flagged as truncated.
const TIMELINE_LIMIT: i64 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallListQuery {
    /// One of queued, ringing, in-progress, completed, busy, failed,
    /// no-answer, canceled, rejected.
    pub status: Option<String>,
    /// Only this agent's calls (UUID).
    pub agent_id: Option<String>,
    /// Calls started at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Calls started before this time (RFC 3339).
    pub to: Option<String>,
    /// A CallSid (`CA` and 32 hex digits), or part of the caller's or the
    /// callee's number: at least 3 digits, optional leading `+`; spaces,
    /// dashes, dots and parentheses are ignored.
    pub q: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallFilter {
    pub status: Option<&'static str>,
    pub agent_id: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub q: Option<CallSearch>,
    pub page: PageRequest,
}

/// What `q` looks for; either way an index answers it.
#[derive(Debug, Clone, PartialEq)]
pub enum CallSearch {
    /// The call with this CallSid (the unique index on `call_sid`).
    CallSid(String),
    /// Calls whose caller or callee number contains these characters (the
    /// trigram index of migration 0017).
    NumberPart(String),
}

impl CallListQuery {
    pub fn validate(&self) -> AppResult<CallFilter> {
        let status = match self
            .status
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(s) => Some(
                CALL_STATUSES
                    .iter()
                    .copied()
                    .find(|known| *known == s)
                    .ok_or_else(|| {
                        AppError::bad_request(format!(
                            "status must be one of {}",
                            CALL_STATUSES.join(", ")
                        ))
                    })?,
            ),
        };
        let from = parse_time("from", self.from.as_deref())?;
        let to = parse_time("to", self.to.as_deref())?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(AppError::bad_request("from must be before to"));
        }
        Ok(CallFilter {
            status,
            agent_id: parse_uuid("agent_id", self.agent_id.as_deref())?,
            from,
            to,
            q: self.q.as_deref().map(normalize_q).transpose()?.flatten(),
            page: PageRequest::parse_text(self.limit.as_deref(), self.cursor.as_deref())?,
        })
    }
}

/// A CallSid as Twilio writes it is kept whole; otherwise keeps digits and a
/// leading `+`, dropping the punctuation people type in numbers; anything
/// else is a 400. The result holds no LIKE wildcard.
fn normalize_q(raw: &str) -> AppResult<Option<CallSearch>> {
    let raw = raw.trim();
    if is_call_sid(raw) {
        return Ok(Some(CallSearch::CallSid(raw.to_owned())));
    }
    let mut out = String::new();
    for (i, ch) in raw.chars().enumerate() {
        match ch {
            '0'..='9' => out.push(ch),
            '+' if i == 0 => out.push(ch),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => {
                return Err(AppError::bad_request(
                    "q must be a CallSid or part of a phone number (digits, optional leading +)",
                ));
            }
        }
    }
    if out.is_empty() || out == "+" {
        return Ok(None);
    }
    let chars = out.chars().count();
    if chars > MAX_Q_CHARS {
        return Err(AppError::bad_request(format!(
            "q must be at most {MAX_Q_CHARS} digits"
        )));
    }
    if chars < MIN_Q_CHARS {
        return Err(AppError::bad_request(format!(
            "q must be at least {MIN_Q_CHARS} digits"
        )));
    }
    Ok(Some(CallSearch::NumberPart(out)))
}

/// `CA` followed by 32 hexadecimal digits.
fn is_call_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("CA") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A call in the list.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct CallSummary {
    pub id: Uuid,
    pub call_sid: String,
    pub direction: String,
    pub status: String,
    pub from_number: String,
    pub to_number: String,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub agent_version_id: Option<Uuid>,
    /// Ring time.
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Answer to end: Twilio's CallDuration when given, else computed.
    pub duration_seconds: Option<i32>,
    /// The storage mode the call was written under: under
    /// `everything_except_pii` its numbers are masked but the last 4
    /// digits and personal data in it is replaced by placeholders
    /// (`[PHONE]`, `[EMAIL]`, `[CARD]`, `[SSN]`, `[IBAN]`); under
    /// `basic_attributes_only` it has no transcript or payloads.
    pub data_storage: DataStorage,
}

const LIST_SELECT: &str =
    "SELECT c.id, c.call_sid, c.direction, c.status, c.from_number, c.to_number,
        c.agent_id, a.name AS agent_name, c.agent_version_id,
        c.started_at, c.answered_at, c.ended_at,
        COALESCE(c.duration_seconds,
                 round(extract(epoch FROM c.ended_at - c.answered_at))::int4) AS duration_seconds,
        c.data_storage
 FROM call_sessions c
 LEFT JOIN agents a ON a.tenant_id = c.tenant_id AND a.id = c.agent_id
 WHERE c.tenant_id = ";

/// The tenant's calls, newest first (`started_at`, then id), one keyset
/// page at a time: calls arriving meanwhile are newer than any cursor, so
/// later pages neither skip nor repeat a call.
#[utoipa::path(get, path = "/client/calls", tag = "client",
    params(CallListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<CallSummary>),
        (status = 400, description = "a bad parameter, named in the message", body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
    ))]
async fn list_calls(
    ClientRead { claims, pool, .. }: ClientRead,
    Query(query): Query<CallListQuery>,
) -> AppResult<Json<Page<CallSummary>>> {
    let filter = query.validate()?;
    Ok(Json(list(&pool, claims.tenant_id, &filter).await?))
}

pub async fn list(pool: &PgPool, tenant_id: Uuid, f: &CallFilter) -> AppResult<Page<CallSummary>> {
    let mut qb = QueryBuilder::<Postgres>::new(LIST_SELECT);
    qb.push_bind(tenant_id);
    if let Some(status) = f.status {
        qb.push(" AND c.status = ").push_bind(status);
    }
    if let Some(agent_id) = f.agent_id {
        qb.push(" AND c.agent_id = ").push_bind(agent_id);
    }
    if let Some(from) = f.from {
        qb.push(" AND c.started_at >= ").push_bind(from);
    }
    if let Some(to) = f.to {
        qb.push(" AND c.started_at < ").push_bind(to);
    }
    match &f.q {
        None => {}
        Some(CallSearch::CallSid(sid)) => {
            qb.push(" AND c.call_sid = ").push_bind(sid.clone());
        }
        Some(CallSearch::NumberPart(part)) => {
            let pattern = format!("%{part}%");
            qb.push(" AND (c.from_number LIKE ")
                .push_bind(pattern.clone())
                .push(" OR c.to_number LIKE ")
                .push_bind(pattern)
                .push(")");
        }
    }
    if let Some(cursor) = f.page.cursor {
        // A row comparison the (tenant_id, started_at DESC, id DESC) index
        // answers directly.
        qb.push(" AND (c.started_at, c.id) < (")
            .push_bind(cursor.at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    qb.push(" ORDER BY c.started_at DESC, c.id DESC LIMIT ")
        .push_bind(f.page.fetch());
    // A number part is planned with its value each time (an unnamed
    // statement): from the column statistics Postgres sees whether it
    // matches few calls (the trigram index) or most (walk the newest-first
    // index until the page is full). A cached generic plan would pick one
    // path for every value, and be slow for the other kind.
    let searching_numbers = matches!(f.q, Some(CallSearch::NumberPart(_)));
    let rows: Vec<CallSummary> = qb
        .build_query_as()
        .persistent(!searching_numbers)
        .fetch_all(pool)
        .await?;
    Ok(f.page.page(rows, |c| Cursor {
        at: c.started_at,
        id: c.id,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CallDetail {
    pub id: Uuid,
    pub call_sid: String,
    pub account_sid: Option<String>,
    pub direction: String,
    pub status: String,
    pub from_number: String,
    pub to_number: String,
    pub phone_number_id: Option<Uuid>,
    pub agent: Option<AgentRef>,
    pub version: Option<VersionRef>,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub durations: Durations,
    /// The storage mode the call was written under (see [`CallSummary`]).
    pub data_storage: DataStorage,
    /// Call events and tool executions, oldest first.
    pub timeline: Vec<TimelineItem>,
    /// More than 1000 events or tool executions: the newest are left out.
    pub timeline_truncated: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionRef {
    pub id: Uuid,
    pub version: i32,
    pub status: String,
    pub published_at: Option<DateTime<Utc>>,
}

/// Seconds; absent while not yet known.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Durations {
    /// Ring to answer (or to end, for a call never answered).
    pub ring_seconds: Option<f64>,
    /// Answer to end: Twilio's CallDuration when given, else computed.
    pub talk_seconds: Option<f64>,
    /// Ring to end.
    pub total_seconds: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimelineItem {
    Event(TimelineEvent),
    ToolExecution(TimelineToolExecution),
}

impl TimelineItem {
    fn key(&self) -> (DateTime<Utc>, Uuid) {
        match self {
            TimelineItem::Event(e) => (e.at, e.id),
            TimelineItem::ToolExecution(t) => (t.at, t.id),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct TimelineEvent {
    pub id: Uuid,
    /// When it happened (`occurred_at`).
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub payload: serde_json::Value,
    pub trace_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct TimelineToolExecution {
    pub id: Uuid,
    /// When it was requested (`created_at`).
    pub at: DateTime<Utc>,
    pub tool_id: Uuid,
    pub tool_name: Option<String>,
    pub status: String,
    pub trace_id: String,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub http_status: Option<i32>,
    pub attempts: i32,
    pub latency_ms: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct CallRow {
    id: Uuid,
    call_sid: String,
    account_sid: Option<String>,
    direction: String,
    status: String,
    from_number: String,
    to_number: String,
    phone_number_id: Option<Uuid>,
    agent_id: Option<Uuid>,
    agent_name: Option<String>,
    agent_version_id: Option<Uuid>,
    version: Option<i32>,
    version_status: Option<String>,
    published_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    ring_seconds: Option<f64>,
    talk_seconds: Option<f64>,
    total_seconds: Option<f64>,
    data_storage: DataStorage,
}

/// One call of the tenant with its timeline.
#[utoipa::path(get, path = "/client/calls/{call_id}", tag = "client",
    params(("call_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CallDetail),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 404, description = "no such call in the token's tenant", body = shared::error::ErrorBody),
    ))]
async fn get_call(
    ClientRead { claims, pool, .. }: ClientRead,
    Path(call_id): Path<Uuid>,
) -> AppResult<Json<CallDetail>> {
    Ok(Json(detail(&pool, claims.tenant_id, call_id).await?))
}

pub async fn detail(pool: &PgPool, tenant_id: Uuid, call_id: Uuid) -> AppResult<CallDetail> {
    let row: CallRow = sqlx::query_as(
        "SELECT c.id, c.call_sid, c.account_sid, c.direction, c.status, c.from_number,
                c.to_number, c.phone_number_id, c.agent_id, a.name AS agent_name,
                c.agent_version_id, v.version, v.status AS version_status, v.published_at,
                c.started_at, c.answered_at, c.ended_at,
                extract(epoch FROM COALESCE(c.answered_at, c.ended_at) - c.started_at)::float8
                    AS ring_seconds,
                COALESCE(c.duration_seconds::float8,
                         extract(epoch FROM c.ended_at - c.answered_at)::float8) AS talk_seconds,
                extract(epoch FROM c.ended_at - c.started_at)::float8 AS total_seconds,
                c.data_storage
         FROM call_sessions c
         LEFT JOIN agents a ON a.tenant_id = c.tenant_id AND a.id = c.agent_id
         LEFT JOIN agent_versions v ON v.tenant_id = c.tenant_id AND v.id = c.agent_version_id
         WHERE c.id = $2 AND c.tenant_id IS NOT DISTINCT FROM $1",
    )
    .bind(tenant_id)
    .bind(call_id)
    .fetch_optional(pool)
    .await?
    .ok_or(AppError::NotFound("call"))?;

    let events: Vec<TimelineEvent> = sqlx::query_as(
        "SELECT id, occurred_at AS at, type, payload, trace_id
         FROM call_events WHERE tenant_id = $1 AND call_id = $2
         ORDER BY occurred_at, id LIMIT $3",
    )
    .bind(tenant_id)
    .bind(call_id)
    .bind(TIMELINE_LIMIT + 1)
    .fetch_all(pool)
    .await?;
    let tools: Vec<TimelineToolExecution> = sqlx::query_as(
        "SELECT te.id, te.created_at AS at, te.tool_id, t.name AS tool_name, te.status,
                te.trace_id, te.input, te.output, te.error_code, te.error_message,
                te.http_status, te.attempts, te.latency_ms, te.started_at, te.finished_at
         FROM tool_executions te
         LEFT JOIN tools t ON t.tenant_id = te.tenant_id AND t.id = te.tool_id
         WHERE te.call_id = $2 AND te.tenant_id IS NOT DISTINCT FROM $1
         ORDER BY te.created_at, te.id LIMIT $3",
    )
    .bind(tenant_id)
    .bind(call_id)
    .bind(TIMELINE_LIMIT + 1)
    .fetch_all(pool)
    .await?;
    let limit = usize::try_from(TIMELINE_LIMIT).unwrap_or(usize::MAX);
    let timeline_truncated = events.len() > limit || tools.len() > limit;
    let mut timeline: Vec<TimelineItem> = events
        .into_iter()
        .take(limit)
        .map(TimelineItem::Event)
        .chain(
            tools
                .into_iter()
                .take(limit)
                .map(TimelineItem::ToolExecution),
        )
        .collect();
    // Both inputs are sorted; a stable sort by time then id merges them.
    timeline.sort_by_key(TimelineItem::key);

    let agent = match (row.agent_id, row.agent_name) {
        (Some(id), Some(name)) => Some(AgentRef { id, name }),
        _ => None,
    };
    let version = match (row.agent_version_id, row.version, row.version_status) {
        (Some(id), Some(version), Some(status)) => Some(VersionRef {
            id,
            version,
            status,
            published_at: row.published_at,
        }),
        _ => None,
    };
    Ok(CallDetail {
        id: row.id,
        call_sid: row.call_sid,
        account_sid: row.account_sid,
        direction: row.direction,
        status: row.status,
        from_number: row.from_number,
        to_number: row.to_number,
        phone_number_id: row.phone_number_id,
        agent,
        version,
        started_at: row.started_at,
        answered_at: row.answered_at,
        ended_at: row.ended_at,
        data_storage: row.data_storage,
        durations: Durations {
            ring_seconds: row.ring_seconds,
            talk_seconds: row.talk_seconds,
            total_seconds: row.total_seconds,
        },
        timeline,
        timeline_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_is_normalised_or_refused() {
        let part = |s: &str| Some(CallSearch::NumberPart(s.into()));
        assert_eq!(
            normalize_q("+1 (415) 555-0100").expect("ok"),
            part("+14155550100")
        );
        assert_eq!(normalize_q("0100").expect("ok"), part("0100"));
        assert_eq!(normalize_q("+33").expect("ok"), part("+33"));
        assert_eq!(normalize_q("  ").expect("ok"), None);
        let sid = "CA0123456789abcdef0123456789abcdef";
        assert_eq!(
            normalize_q(&format!(" {sid} ")).expect("ok"),
            Some(CallSearch::CallSid(sid.into()))
        );
        assert!(normalize_q("CA0123").is_err(), "not a whole CallSid");
        assert!(normalize_q("12").is_err());
        assert!(normalize_q("41%").is_err());
        assert!(normalize_q("1+2").is_err());
        assert!(normalize_q("12345678901234567").is_err());
    }

    #[test]
    fn list_query_names_bad_parameters() {
        let bad = |q: CallListQuery| q.validate().expect_err("refused").to_string();
        let base = CallListQuery::default;
        assert!(
            bad(CallListQuery {
                status: Some("done".into()),
                ..base()
            })
            .starts_with("status")
        );
        assert!(
            bad(CallListQuery {
                cursor: Some("zz".into()),
                ..base()
            })
            .starts_with("cursor")
        );
        assert!(
            bad(CallListQuery {
                limit: Some("0".into()),
                ..base()
            })
            .starts_with("limit")
        );
        assert!(
            bad(CallListQuery {
                from: Some("2026-11-25T00:00:00Z".into()),
                to: Some("2026-11-24T00:00:00Z".into()),
                ..base()
            })
            .starts_with("from")
        );
    }
}
