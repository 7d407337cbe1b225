//! `GET /client/kpis`: the dashboard figures of a period, read in one
//! snapshot from the rollups of `shared::kpi_rollups` where they cover it
//! and from the rows elsewhere (`kpi_plan` draws the line), so the cost
//! stays flat whatever the period's length and the tenant's size; the
//! figures are the same either way (docs/decisions/0047-kpi-rollups.md).
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
//!   agent's calls); success rate = succeeded / finished (succeeded +
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

use shared::kpi_rollups::{
    ALL_AGENTS, CALL_AGENT_LOOKUP, DURATION_EXPR, METRIC_DURATION, METRIC_TOOL_LATENCY,
};

use super::kpi_plan::{Distribution, ReadPlan};
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
        let agent_id = parse_uuid("agent_id", self.agent_id.as_deref())?;
        if agent_id == Some(ALL_AGENTS) {
            // The rollups keep "all agents" under the nil id.
            return Err(AppError::bad_request(
                "agent_id: the nil UUID is not an agent",
            ));
        }
        Ok(KpiParams {
            from,
            to,
            agent_id,
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
    total_duration: f64,
    series: SqlJson<Vec<DayPoint>>,
    tools_total: i64,
    tools_succeeded: i64,
    tools_failed: i64,
}

/// How far the rollups are computed for the tenant, and the hours marked
/// since (`shared::kpi_rollups`). `$1` tenant, `$2`/`$3` the period.
const ROLLUP_STATE_SQL: &str = "
SELECT (SELECT rolled_up_to FROM kpi_rollup_progress WHERE tenant_id = $1) AS rolled_up_to,
       ARRAY(SELECT DISTINCT hour FROM kpi_dirty_hours
             WHERE tenant_id = $1 AND hour > $2 - interval '1 hour' AND hour < $3
             ORDER BY hour) AS dirty_hours";

/// The counts, sums and the series: the plan's runs of `kpi_counts`
/// buckets, and the rows for the rest (the period's ragged ends, hours not
/// computed yet or marked dirty). `$1` tenant, `$2` from, `$3` to, `$4`
/// IANA zone, `$5` agent key, `$6`/`$7` starts and ends of the ranges read
/// from the rows, `$8`/`$9`/`$10` the runs' grains, starts and ends.
/// `{agent}` and `{tool_agent}` are empty or filter on `$5` (fixed text,
/// never input). Every range is read through its own index range scan
/// (`OFFSET 0` keeps each lateral subquery apart): the plan must not depend
/// on how many rows Postgres guesses the rollups or the ranges hold.
const KPI_SQL: &str = "
WITH rolled AS (
    SELECT k.* FROM unnest($8::int2[], $9::timestamptz[], $10::timestamptz[]) AS p(grain, s, e)
    CROSS JOIN LATERAL (
        SELECT * FROM kpi_counts
        WHERE tenant_id = $1 AND agent_key = $5 AND grain = p.grain
          AND bucket >= p.s AND bucket < p.e
        OFFSET 0) AS k
),
raw_calls AS (
    SELECT c.started_at, c.status, c.direction, c.answered_at, d.dur
    FROM unnest($6::timestamptz[], $7::timestamptz[]) AS r(s, e)
    CROSS JOIN LATERAL (
        SELECT * FROM call_sessions c
        WHERE c.tenant_id = $1 AND c.started_at >= r.s AND c.started_at < r.e {agent}
        OFFSET 0) AS c
    CROSS JOIN LATERAL (SELECT {duration} AS dur) AS d
),
g AS (
    SELECT (started_at AT TIME ZONE $4)::date AS day,
           count(*) AS calls,
           count(*) FILTER (WHERE status = 'queued') AS queued,
           count(*) FILTER (WHERE status = 'ringing') AS ringing,
           count(*) FILTER (WHERE status = 'in-progress') AS in_progress,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'busy') AS busy,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'no-answer') AS no_answer,
           count(*) FILTER (WHERE status = 'canceled') AS canceled,
           count(*) FILTER (WHERE status = 'rejected') AS rejected,
           count(*) FILTER (WHERE direction = 'inbound') AS inbound,
           count(answered_at) FILTER (WHERE direction = 'inbound') AS answered_inbound,
           count(dur) AS with_duration,
           sum(dur) AS seconds
    FROM raw_calls GROUP BY 1
    UNION ALL
    SELECT (bucket AT TIME ZONE $4)::date, sum(calls), sum(queued), sum(ringing),
           sum(in_progress), sum(completed), sum(busy), sum(failed), sum(no_answer),
           sum(canceled), sum(rejected), sum(inbound), sum(answered_inbound),
           sum(with_duration), sum(seconds)
    FROM rolled GROUP BY 1
),
totals AS (
    SELECT COALESCE(sum(calls), 0)::int8 AS total,
           COALESCE(sum(queued), 0)::int8 AS queued,
           COALESCE(sum(ringing), 0)::int8 AS ringing,
           COALESCE(sum(in_progress), 0)::int8 AS in_progress,
           COALESCE(sum(completed), 0)::int8 AS completed,
           COALESCE(sum(busy), 0)::int8 AS busy,
           COALESCE(sum(failed), 0)::int8 AS failed,
           COALESCE(sum(no_answer), 0)::int8 AS no_answer,
           COALESCE(sum(canceled), 0)::int8 AS canceled,
           COALESCE(sum(rejected), 0)::int8 AS rejected,
           COALESCE(sum(inbound), 0)::int8 AS inbound,
           COALESCE(sum(answered_inbound), 0)::int8 AS answered_inbound,
           COALESCE(sum(with_duration), 0)::int8 AS with_duration,
           (sum(seconds) / NULLIF(sum(with_duration), 0))::float8 AS avg_duration,
           COALESCE(sum(seconds), 0)::float8 AS total_duration
    FROM g
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
    SELECT COALESCE(sum(total), 0)::int8 AS tools_total,
           COALESCE(sum(succeeded), 0)::int8 AS tools_succeeded,
           COALESCE(sum(failed), 0)::int8 AS tools_failed
    FROM (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE te.status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE te.status = 'failed') AS failed
        FROM unnest($6::timestamptz[], $7::timestamptz[]) AS r(s, e)
        CROSS JOIN LATERAL (
            SELECT * FROM tool_executions te
            WHERE te.tenant_id = $1 AND te.created_at >= r.s AND te.created_at < r.e
                  {tool_agent}
            OFFSET 0) AS te
        UNION ALL
        SELECT sum(tools_total), sum(tools_succeeded), sum(tools_failed) FROM rolled
    ) AS x
)
SELECT * FROM totals, series, tools";

/// The distributions behind the percentiles: whole UTC months and days
/// from `kpi_histograms`, the rest from the rows. `$1` tenant, `$2` agent
/// key, `$3` months, `$4` days, `$5`/`$6` the ranges read from the rows.
const DISTRIBUTIONS_SQL: &str = "
SELECT metric, vals, counts FROM kpi_histograms
WHERE tenant_id = $1 AND agent_key = $2 AND metric IN (1, 2)
  AND ((grain = 3 AND bucket = ANY($3)) OR (grain = 2 AND bucket = ANY($4)))
UNION ALL
SELECT 1::int2, array_agg(d.dur), NULL
FROM unnest($5::timestamptz[], $6::timestamptz[]) AS r(s, e)
CROSS JOIN LATERAL (
    SELECT * FROM call_sessions c
    WHERE c.tenant_id = $1 AND c.started_at >= r.s AND c.started_at < r.e {agent}
    OFFSET 0) AS c
CROSS JOIN LATERAL (SELECT {duration} AS dur) AS d
WHERE d.dur IS NOT NULL
UNION ALL
SELECT 2::int2, array_agg(te.latency_ms::float8), NULL
FROM unnest($5::timestamptz[], $6::timestamptz[]) AS r(s, e)
CROSS JOIN LATERAL (
    SELECT * FROM tool_executions te
    WHERE te.tenant_id = $1 AND te.created_at >= r.s AND te.created_at < r.e {tool_agent}
    OFFSET 0) AS te
WHERE te.latency_ms IS NOT NULL";

/// One row of `DISTRIBUTIONS_SQL`: a metric's values, with their counts
/// (a histogram) or without (values read from the rows, once each).
type DistributionPart = (i16, Option<Vec<f64>>, Option<Vec<i64>>);

/// `sql` with the duration expression and, when `agent_param` is given (the
/// number of the parameter holding the agent's id), the agent filters.
fn with_filters(sql: &str, agent_param: Option<u8>) -> String {
    let (agent, tool_agent) = match agent_param {
        Some(n) => (
            format!("AND c.agent_id = ${n}"),
            // A tool execution counts for the agent of its call.
            format!("AND ({CALL_AGENT_LOOKUP}) = ${n}"),
        ),
        None => (String::new(), String::new()),
    };
    sql.replace("{duration}", DURATION_EXPR)
        .replace("{agent}", &agent)
        .replace("{tool_agent}", &tool_agent)
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

/// The figures of a period, read in one snapshot (a repeatable-read
/// transaction): the rollups' state, the counts, the distributions.
pub async fn compute(pool: &sqlx::PgPool, tenant_id: Uuid, p: &KpiParams) -> AppResult<Kpis> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let (rolled_up_to, dirty_hours): (Option<DateTime<Utc>>, Vec<DateTime<Utc>>) =
        sqlx::query_as(ROLLUP_STATE_SQL)
            .bind(tenant_id)
            .bind(p.from)
            .bind(p.to)
            .fetch_one(&mut *tx)
            .await?;
    let plan = ReadPlan::new(p.from, p.to, p.tz, rolled_up_to, &dirty_hours);
    let agent_key = p.agent_id.unwrap_or(ALL_AGENTS);
    let with_agent = p.agent_id.is_some();
    let run_grains: Vec<i16> = plan.counts.iter().map(|(grain, _)| *grain).collect();
    let (run_starts, run_ends): (Vec<_>, Vec<_>) = plan.counts.iter().map(|(_, run)| *run).unzip();
    let (raw_starts, raw_ends) = plan
        .counts_from_rows
        .iter()
        .copied()
        .unzip::<_, _, Vec<_>, Vec<_>>();
    // Both reads are planned with their values each time (unnamed
    // statements): the ranges read from the rows differ from one period to
    // the next, and a plan kept from a small table would scan the tenant.
    let row = sqlx::query_as::<_, KpiRow>(sqlx::AssertSqlSafe(with_filters(
        KPI_SQL,
        with_agent.then_some(5),
    )))
    .persistent(false)
    .bind(tenant_id)
    .bind(p.from)
    .bind(p.to)
    .bind(p.tz.name())
    .bind(agent_key)
    .bind(&raw_starts)
    .bind(&raw_ends)
    .bind(&run_grains)
    .bind(&run_starts)
    .bind(&run_ends)
    .fetch_one(&mut *tx)
    .await
    .map_err(|err| {
        // chrono-tz and Postgres ship their own zone data; a name only
        // one of them knows is the caller's problem, not a 500.
        match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("22023") => {
                AppError::bad_request("tz is not a time zone the database knows")
            }
            _ => AppError::from(err),
        }
    })?;
    let (hist_starts, hist_ends) = plan
        .distributions_from_rows
        .iter()
        .copied()
        .unzip::<_, _, Vec<_>, Vec<_>>();
    let parts: Vec<DistributionPart> = sqlx::query_as(sqlx::AssertSqlSafe(with_filters(
        DISTRIBUTIONS_SQL,
        with_agent.then_some(2),
    )))
    .persistent(false)
    .bind(tenant_id)
    .bind(agent_key)
    .bind(&plan.months)
    .bind(&plan.days)
    .bind(&hist_starts)
    .bind(&hist_ends)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut durations = Distribution::default();
    let mut latencies = Distribution::default();
    for (metric, vals, counts) in parts {
        let into = match metric {
            METRIC_DURATION => &mut durations,
            METRIC_TOOL_LATENCY => &mut latencies,
            _ => continue,
        };
        into.add(vals.unwrap_or_default(), counts);
    }
    let [p50, p95] = durations.percentiles([0.5, 0.95]);
    let [latency_p95] = latencies.percentiles([0.95]);

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
            p95_latency_ms: latency_p95,
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
