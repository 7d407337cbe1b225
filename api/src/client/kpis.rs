//! `GET /client/kpis`: the dashboard figures of a period, computed in one
//! SQL statement (one round trip, one snapshot) so no call row is loaded
//! into the api.
//!
//! Definitions (where the issue leaves room, the choice is written here and
//! in the README):
//! - the period is `[from, to)` on `started_at` (ring time); default the last
//!   7 days, at most 366 days;
//! - answer rate = inbound calls with `answered_at` (ever in progress) /
//!   all inbound calls; absent when there is no inbound call;
//! - a call's duration runs from answer to end: Twilio's `CallDuration`
//!   (`duration_seconds`) when given, else `ended_at - answered_at`; the
//!   duration figures cover answered calls whose duration is known;
//! - tool executions are those created in the period (for `agent_id`, of that
//!   agent's calls, which started at most a day before the period since
//!   Twilio caps a call at 24 hours); success rate = succeeded / finished (succeeded +
//!   failed); latency percentiles over executions with a recorded latency;
//! - the series has one point per day (in `tz`, default UTC) from the day of
//!   `from` to the day of the end of the period, days without calls included.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::ClientRead;
use super::{parse_time, parse_uuid};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Query};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(kpis))
}

pub const DEFAULT_PERIOD_DAYS: i64 = 7;
pub const MAX_PERIOD_DAYS: i64 = 366;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KpiQuery {
    /// Start of the period (RFC 3339, inclusive); default `to` minus 7 days.
    pub from: Option<String>,
    /// End of the period (RFC 3339, exclusive); default now.
    pub to: Option<String>,
    /// Only this agent's calls (UUID).
    pub agent_id: Option<String>,
    /// IANA time zone of the per-day series (e.g. `Europe/Paris`); default UTC.
    pub tz: Option<String>,
}

/// The validated period and filters.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiParams {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub agent_id: Option<Uuid>,
    pub tz: chrono_tz::Tz,
}

impl KpiQuery {
    pub fn validate(&self, now: DateTime<Utc>) -> AppResult<KpiParams> {
        let to = parse_time("to", self.to.as_deref())?.unwrap_or(now);
        let from = parse_time("from", self.from.as_deref())?
            .unwrap_or(to - Duration::days(DEFAULT_PERIOD_DAYS));
        if from >= to {
            return Err(AppError::bad_request("from must be before to"));
        }
        if to - from > Duration::days(MAX_PERIOD_DAYS) {
            return Err(AppError::bad_request(format!(
                "from/to: the period must be at most {MAX_PERIOD_DAYS} days"
            )));
        }
        let tz = match self.tz.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            None => chrono_tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                AppError::bad_request("tz must be an IANA time zone name such as Europe/Paris")
            })?,
        };
        Ok(KpiParams {
            from,
            to,
            agent_id: parse_uuid("agent_id", self.agent_id.as_deref())?,
            tz,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Kpis {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The time zone of the series.
    pub tz: String,
    pub agent_id: Option<Uuid>,
    pub calls: CallFigures,
    pub duration: DurationFigures,
    pub tools: ToolFigures,
    /// One point per day of the period, in `tz`.
    pub series: Vec<DayPoint>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CallFigures {
    pub total: i64,
    pub by_status: ByStatus,
    pub inbound: i64,
    /// Inbound calls that were ever in progress (`answered_at` set).
    pub answered_inbound: i64,
    /// `answered_inbound / inbound`, 0 to 1; absent without inbound calls.
    pub answer_rate: Option<f64>,
}

/// Calls per status (Twilio's names).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ByStatus {
    pub queued: i64,
    pub ringing: i64,
    #[serde(rename = "in-progress")]
    pub in_progress: i64,
    pub completed: i64,
    pub busy: i64,
    pub failed: i64,
    #[serde(rename = "no-answer")]
    pub no_answer: i64,
    pub canceled: i64,
    /// Refused at ring time: the tenant or agent was at its concurrent-call
    /// limit (counted here, not under `busy` or `failed`).
    pub rejected: i64,
}

/// Durations from answer to end, over answered calls with a known duration.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DurationFigures {
    pub calls_with_duration: i64,
    pub average_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub total_seconds: f64,
    pub total_minutes: f64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ToolFigures {
    pub executions_total: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// `succeeded / (succeeded + failed)`; absent when none finished.
    pub success_rate: Option<f64>,
    pub p95_latency_ms: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayPoint {
    /// The day in `tz`.
    pub date: NaiveDate,
    pub calls: i64,
    pub minutes: f64,
}

#[derive(sqlx::FromRow)]
struct KpiRow {
    total: i64,
    queued: i64,
    ringing: i64,
    in_progress: i64,
    completed: i64,
    busy: i64,
    failed: i64,
    no_answer: i64,
    canceled: i64,
    rejected: i64,
    inbound: i64,
    answered_inbound: i64,
    with_duration: i64,
    avg_duration: Option<f64>,
    duration_percentiles: Option<Vec<f64>>,
    total_duration: f64,
    series: SqlJson<Vec<DayPoint>>,
    tools_total: i64,
    tools_succeeded: i64,
    tools_failed: i64,
    tools_p95_latency: Option<f64>,
}

/// `$1` tenant, `$2` from, `$3` to, `$4` IANA zone; `{agent}` and
/// `{tool_agent}` are empty or filter on `$5` (fixed text, never input).
/// The period's calls are read twice through the covering index of
/// migration 0005 (index-only scans): once grouped by day and status (a few
/// hundred groups that every count, sum and the series derive from), once
/// sorted for the duration percentiles. Grouping by status is cheaper than
/// eight text comparisons per row, and nothing spills to disk.
const KPI_SQL: &str = "
WITH g AS (
    SELECT (started_at AT TIME ZONE $4)::date AS day,
           status,
           count(*) AS calls,
           count(*) FILTER (WHERE direction = 'inbound') AS inbound,
           count(answered_at) FILTER (WHERE direction = 'inbound') AS answered_inbound,
           count(d.dur) AS with_duration,
           sum(d.dur) AS seconds
    FROM call_sessions
    CROSS JOIN LATERAL (
        SELECT CASE WHEN answered_at IS NOT NULL
                    THEN COALESCE(duration_seconds::float8,
                                  date_part('epoch', ended_at - answered_at))
               END AS dur
    ) AS d
    WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3 {agent}
    GROUP BY 1, 2
),
totals AS (
    SELECT COALESCE(sum(calls), 0)::int8 AS total,
           COALESCE(sum(calls) FILTER (WHERE status = 'queued'), 0)::int8 AS queued,
           COALESCE(sum(calls) FILTER (WHERE status = 'ringing'), 0)::int8 AS ringing,
           COALESCE(sum(calls) FILTER (WHERE status = 'in-progress'), 0)::int8 AS in_progress,
           COALESCE(sum(calls) FILTER (WHERE status = 'completed'), 0)::int8 AS completed,
           COALESCE(sum(calls) FILTER (WHERE status = 'busy'), 0)::int8 AS busy,
           COALESCE(sum(calls) FILTER (WHERE status = 'failed'), 0)::int8 AS failed,
           COALESCE(sum(calls) FILTER (WHERE status = 'no-answer'), 0)::int8 AS no_answer,
           COALESCE(sum(calls) FILTER (WHERE status = 'canceled'), 0)::int8 AS canceled,
           COALESCE(sum(calls) FILTER (WHERE status = 'rejected'), 0)::int8 AS rejected,
           COALESCE(sum(inbound), 0)::int8 AS inbound,
           COALESCE(sum(answered_inbound), 0)::int8 AS answered_inbound,
           COALESCE(sum(with_duration), 0)::int8 AS with_duration,
           (sum(seconds) / NULLIF(sum(with_duration), 0))::float8 AS avg_duration,
           COALESCE(sum(seconds), 0)::float8 AS total_duration
    FROM g
),
percentiles AS (
    SELECT percentile_cont(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (
               ORDER BY COALESCE(duration_seconds::float8,
                                 date_part('epoch', ended_at - answered_at))
           ) AS duration_percentiles
    FROM call_sessions
    WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3 {agent}
      AND answered_at IS NOT NULL
),
per_day AS (
    SELECT day, sum(calls)::int8 AS calls, COALESCE(sum(seconds), 0)::float8 AS seconds
    FROM g GROUP BY day
),
series AS (
    SELECT COALESCE(jsonb_agg(jsonb_build_object(
               'date', d.day::date,
               'calls', COALESCE(p.calls, 0),
               'minutes', COALESCE(p.seconds, 0) / 60.0
           ) ORDER BY d.day), '[]'::jsonb) AS series
    FROM generate_series(($2 AT TIME ZONE $4)::date,
                         (($3 - interval '1 microsecond') AT TIME ZONE $4)::date,
                         interval '1 day') AS d(day)
    LEFT JOIN per_day p ON p.day = d.day::date
),
tools AS (
    SELECT count(*) AS tools_total,
           count(*) FILTER (WHERE te.status = 'succeeded') AS tools_succeeded,
           count(*) FILTER (WHERE te.status = 'failed') AS tools_failed,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY te.latency_ms::float8)
               AS tools_p95_latency
    FROM tool_executions te
    WHERE te.tenant_id = $1 AND te.created_at >= $2 AND te.created_at < $3 {tool_agent}
)
SELECT * FROM totals, percentiles, series, tools";

fn kpi_sql(with_agent: bool) -> String {
    let (agent, tool_agent) = if with_agent {
        (
            "AND agent_id = $5",
            // Twilio ends a call after 24 hours at most, so a call with an
            // execution in the period started at most a day before it: the
            // bound keeps this to the agent's calls near the period.
            "AND te.call_id IN (SELECT cs.id FROM call_sessions cs
                                WHERE cs.tenant_id = $1 AND cs.agent_id = $5
                                  AND cs.started_at >= $2 - interval '1 day'
                                  AND cs.started_at < $3)",
        )
    } else {
        ("", "")
    };
    KPI_SQL
        .replace("{agent}", agent)
        .replace("{tool_agent}", tool_agent)
}

/// KPIs of a period for the token's tenant.
#[utoipa::path(get, path = "/client/kpis", tag = "client",
    params(KpiQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Kpis),
        (status = 400, description = "bad from, to, agent_id or tz", body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
    ))]
async fn kpis(
    ClientRead { claims, pool, .. }: ClientRead,
    Query(query): Query<KpiQuery>,
) -> AppResult<Json<Kpis>> {
    let params = query.validate(Utc::now())?;
    Ok(Json(compute(&pool, claims.tenant_id, &params).await?))
}

pub async fn compute(pool: &sqlx::PgPool, tenant_id: Uuid, p: &KpiParams) -> AppResult<Kpis> {
    let sql = kpi_sql(p.agent_id.is_some());
    let mut query = sqlx::query_as::<_, KpiRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(p.from)
        .bind(p.to)
        .bind(p.tz.name());
    if let Some(agent_id) = p.agent_id {
        query = query.bind(agent_id);
    }
    let row = query.fetch_one(pool).await.map_err(|err| {
        // chrono-tz and Postgres ship their own zone data; a name only one
        // of them knows is the caller's problem, not a 500.
        match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("22023") => {
                AppError::bad_request("tz is not a time zone the database knows")
            }
            _ => AppError::from(err),
        }
    })?;
    let (p50, p95) = match row.duration_percentiles.as_deref() {
        Some([p50, p95]) => (Some(*p50), Some(*p95)),
        _ => (None, None),
    };
    let finished = row.tools_succeeded + row.tools_failed;
    Ok(Kpis {
        from: p.from,
        to: p.to,
        tz: p.tz.name().to_owned(),
        agent_id: p.agent_id,
        calls: CallFigures {
            total: row.total,
            by_status: ByStatus {
                queued: row.queued,
                ringing: row.ringing,
                in_progress: row.in_progress,
                completed: row.completed,
                busy: row.busy,
                failed: row.failed,
                no_answer: row.no_answer,
                canceled: row.canceled,
                rejected: row.rejected,
            },
            inbound: row.inbound,
            answered_inbound: row.answered_inbound,
            answer_rate: ratio(row.answered_inbound, row.inbound),
        },
        duration: DurationFigures {
            calls_with_duration: row.with_duration,
            average_seconds: row.avg_duration,
            p50_seconds: p50,
            p95_seconds: p95,
            total_seconds: row.total_duration,
            total_minutes: row.total_duration / 60.0,
        },
        tools: ToolFigures {
            executions_total: row.tools_total,
            succeeded: row.tools_succeeded,
            failed: row.tools_failed,
            success_rate: ratio(row.tools_succeeded, finished),
            p95_latency_ms: row.tools_p95_latency,
        },
        series: row.series.0,
    })
}

/// A share of two counts; the counts are far below 2^52, so f64 is exact.
#[allow(clippy::cast_precision_loss)]
fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: Option<&str>, to: Option<&str>, tz: Option<&str>) -> KpiQuery {
        KpiQuery {
            from: from.map(Into::into),
            to: to.map(Into::into),
            agent_id: None,
            tz: tz.map(Into::into),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn defaults_to_the_last_seven_days() {
        let p = q(None, None, None).validate(now()).expect("valid");
        assert_eq!(p.to, now());
        assert_eq!(p.to - p.from, Duration::days(7));
        assert_eq!(p.tz, chrono_tz::UTC);
    }

    #[test]
    fn range_rules_name_the_parameter() {
        let err = |q: KpiQuery| q.validate(now()).expect_err("refused").to_string();
        assert!(err(q(Some("2026-11-25T12:00:00Z"), None, None)).contains("from"));
        assert!(err(q(Some("2025-01-01T00:00:00Z"), None, None)).contains("366"));
        assert!(err(q(Some("x"), None, None)).starts_with("from"));
        assert!(err(q(None, Some("x"), None)).starts_with("to"));
        assert!(err(q(None, None, Some("Mars/Olympus"))).starts_with("tz"));
        let p = q(
            Some("2025-11-24T12:00:00Z"),
            Some("2026-11-25T12:00:00Z"),
            Some("Europe/Paris"),
        )
        .validate(now())
        .expect("366 days is allowed");
        assert_eq!(p.tz, chrono_tz::Europe::Paris);
    }
}
