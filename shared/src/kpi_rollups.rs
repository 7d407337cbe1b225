//! The KPI rollups (`migrations/0018_kpi_rollups.sql`): what they hold and
//! the compaction that computes them from the rows. The dispatch-worker
//! runs [`compact`] on a schedule; the api reads the rollups for
//! `GET /client/kpis` (`api/src/client/kpis.rs`). See
//! docs/decisions/0047-kpi-rollups.md.
//!
//! The rollups are a function of the rows, computed hour by hour once an
//! hour is over and again when a trigger marked it dirty; a compaction
//! that runs twice, late, or on two workers at once changes nothing but
//! when the figures come from the rollups instead of the rows.

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The `agent_key` of the rows that cover all of a tenant's calls.
pub const ALL_AGENTS: Uuid = Uuid::nil();
/// `kpi_histograms.metric`: a call's duration in seconds.
pub const METRIC_DURATION: i16 = 1;
/// `kpi_histograms.metric`: a tool execution's latency in ms.
pub const METRIC_TOOL_LATENCY: i16 = 2;
/// `kpi_histograms.grain` (days and months); `kpi_counts.grain` (days).
pub const GRAIN_DAY: i16 = 2;
pub const GRAIN_MONTH: i16 = 3;

/// Most hours one compaction takes for one tenant when catching up (a new
/// deployment with an imported history, or a worker that was down): a
/// week, so each transaction stays short.
const CATCH_UP_HOURS: i64 = 7 * 24;

/// A call's duration as the KPIs define it: answer to end, Twilio's
/// `CallDuration` when given; NULL for a call never answered or not ended.
/// `c` is the call_sessions alias. The api's raw reads use the same.
pub const DURATION_EXPR: &str = "CASE WHEN c.answered_at IS NOT NULL
     THEN COALESCE(c.duration_seconds::float8, date_part('epoch', c.ended_at - c.answered_at)) END";

/// The agent of a tool execution's call (`te`), looked up by primary key
/// within the execution's tenant. `LIMIT 1` keeps Postgres from turning the
/// lookup into a join that reads every call when its estimates of the rows
/// run high.
pub const CALL_AGENT_LOOKUP: &str =
    "SELECT agent_id FROM call_sessions WHERE id = te.call_id AND tenant_id = te.tenant_id LIMIT 1";

/// Tenants with hours to compute: new hours are over, or marks wait.
const TENANTS_DUE: &str = "
SELECT t.id FROM tenants t
LEFT JOIN kpi_rollup_progress p ON p.tenant_id = t.id
WHERE p.rolled_up_to IS NULL OR p.rolled_up_to < kpi_compaction_cutoff()
   OR EXISTS (SELECT 1 FROM kpi_dirty_hours d WHERE d.tenant_id = t.id)
ORDER BY t.id";

/// Where the tenant's compaction stands; a tenant never compacted starts at
/// the hour of its oldest row (or at the cutoff when it has none).
const PROGRESS: &str = "
SELECT COALESCE(
    (SELECT rolled_up_to FROM kpi_rollup_progress WHERE tenant_id = $1),
    date_trunc('hour', LEAST(
        (SELECT min(started_at) FROM call_sessions WHERE tenant_id = $1),
        (SELECT min(created_at) FROM tool_executions WHERE tenant_id = $1),
        kpi_compaction_cutoff()), 'UTC')),
    kpi_compaction_cutoff()";

/// The hours marked dirty, each once (an import marks an hour per row).
const MARKED_HOURS: &str =
    "SELECT DISTINCT hour FROM kpi_dirty_hours WHERE tenant_id = $1 ORDER BY hour";

/// `kpi_counts.grain`.
pub const GRAIN_QUARTER: i16 = 0;
pub const GRAIN_HOUR: i16 = 1;

/// `$1` tenant, `$2`/`$3` the starts and ends of whole hours (or days) to
/// compute, `$4` the grain.
const DELETE_COUNTS: &str = "
DELETE FROM kpi_counts k USING unnest($2::timestamptz[], $3::timestamptz[]) AS r(s, e)
WHERE k.tenant_id = $1 AND k.grain = $4 AND k.bucket >= r.s AND k.bucket < r.e";

/// The columns every grain of `kpi_counts` sums.
const COUNT_COLUMNS: &str = "calls, queued, ringing, in_progress, completed, busy, failed,
    no_answer, canceled, rejected, inbound, answered_inbound, with_duration, seconds,
    tools_total, tools_succeeded, tools_failed";

/// Hours (`$4` = 1) from their quarters, or UTC days (`$4` = 2) from their
/// hours; `$2`/`$3` ranges of whole buckets of grain `$4`.
const INSERT_COARSER_COUNTS: &str = "
INSERT INTO kpi_counts (tenant_id, agent_key, grain, bucket, {columns})
SELECT $1, k.agent_key, $4, date_trunc(CASE $4 WHEN 1 THEN 'hour' ELSE 'day' END, k.bucket, 'UTC'),
       {sums}
FROM unnest($2::timestamptz[], $3::timestamptz[]) AS r(s, e)
JOIN kpi_counts k ON k.tenant_id = $1 AND k.grain = $4 - 1 AND k.bucket >= r.s AND k.bucket < r.e
GROUP BY k.agent_key, 4";

const INSERT_QUARTERS: &str = "
INSERT INTO kpi_counts (tenant_id, agent_key, grain, bucket, {columns})
SELECT $1, agent_key, 0, bucket, {sums}
FROM (
    SELECT k.agent_key, date_bin('15 minutes', c.started_at, timestamptz '2000-01-01 00:00:00+00') AS bucket,
           1 AS calls,
           (c.status = 'queued')::int AS queued, (c.status = 'ringing')::int AS ringing,
           (c.status = 'in-progress')::int AS in_progress, (c.status = 'completed')::int AS completed,
           (c.status = 'busy')::int AS busy, (c.status = 'failed')::int AS failed,
           (c.status = 'no-answer')::int AS no_answer, (c.status = 'canceled')::int AS canceled,
           (c.status = 'rejected')::int AS rejected,
           (c.direction = 'inbound')::int AS inbound,
           (c.direction = 'inbound' AND c.answered_at IS NOT NULL)::int AS answered_inbound,
           (d.dur IS NOT NULL)::int AS with_duration, COALESCE(d.dur, 0) AS seconds,
           0 AS tools_total, 0 AS tools_succeeded, 0 AS tools_failed
    FROM unnest($2::timestamptz[], $3::timestamptz[]) AS r(s, e)
    JOIN call_sessions c ON c.tenant_id = $1 AND c.started_at >= r.s AND c.started_at < r.e
    CROSS JOIN LATERAL (SELECT {duration} AS dur) AS d
    CROSS JOIN LATERAL (VALUES ('00000000-0000-0000-0000-000000000000'::uuid), (c.agent_id)) AS k(agent_key)
    WHERE k.agent_key IS NOT NULL
    UNION ALL
    SELECT k.agent_key, date_bin('15 minutes', te.created_at, timestamptz '2000-01-01 00:00:00+00'),
           0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
           1, (te.status = 'succeeded')::int, (te.status = 'failed')::int
    FROM unnest($2::timestamptz[], $3::timestamptz[]) AS r(s, e)
    JOIN tool_executions te ON te.tenant_id = $1 AND te.created_at >= r.s AND te.created_at < r.e
    LEFT JOIN LATERAL ({call_agent}) AS c ON true
    CROSS JOIN LATERAL (VALUES ('00000000-0000-0000-0000-000000000000'::uuid), (c.agent_id)) AS k(agent_key)
    WHERE k.agent_key IS NOT NULL
) AS x
GROUP BY agent_key, bucket";

/// `sum(x)` of every column of `COUNT_COLUMNS`, prefixed by `alias.` when
/// given.
fn count_sums(alias: &str) -> String {
    COUNT_COLUMNS
        .split(',')
        .map(|c| format!("sum({alias}{})", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$1` tenant, `$2` starts of whole UTC days, `$3` the grain's
/// (`GRAIN_DAY`) value.
const DELETE_HISTOGRAMS: &str = "
DELETE FROM kpi_histograms WHERE tenant_id = $1 AND grain = $3 AND bucket = ANY($2)";

const INSERT_DAY_HISTOGRAMS: &str = "
INSERT INTO kpi_histograms (tenant_id, agent_key, metric, grain, bucket, vals, counts)
SELECT $1, agent_key, metric, 2, day, array_agg(value ORDER BY value), array_agg(n ORDER BY value)
FROM (
    SELECT agent_key, metric, day, value, count(*) AS n
    FROM (
        SELECT k.agent_key, 1 AS metric, d.day, x.dur AS value
        FROM unnest($2::timestamptz[]) AS d(day)
        JOIN call_sessions c ON c.tenant_id = $1 AND c.started_at >= d.day
                            AND c.started_at < d.day + interval '24 hours'
        CROSS JOIN LATERAL (SELECT {duration} AS dur) AS x
        CROSS JOIN LATERAL (VALUES ('00000000-0000-0000-0000-000000000000'::uuid), (c.agent_id)) AS k(agent_key)
        WHERE k.agent_key IS NOT NULL AND x.dur IS NOT NULL
        UNION ALL
        SELECT k.agent_key, 2, d.day, te.latency_ms::float8
        FROM unnest($2::timestamptz[]) AS d(day)
        JOIN tool_executions te ON te.tenant_id = $1 AND te.created_at >= d.day
                               AND te.created_at < d.day + interval '24 hours'
        LEFT JOIN LATERAL ({call_agent}) AS c ON true
        CROSS JOIN LATERAL (VALUES ('00000000-0000-0000-0000-000000000000'::uuid), (c.agent_id)) AS k(agent_key)
        WHERE k.agent_key IS NOT NULL AND te.latency_ms IS NOT NULL
    ) AS v
    GROUP BY agent_key, metric, day, value
) AS h
GROUP BY agent_key, metric, day";

/// A month from its days' histograms. The session runs in UTC (set by the
/// transaction), so `interval '1 month'` is a UTC month.
const INSERT_MONTH_HISTOGRAMS: &str = "
INSERT INTO kpi_histograms (tenant_id, agent_key, metric, grain, bucket, vals, counts)
SELECT $1, agent_key, metric, 3, month, array_agg(value ORDER BY value), array_agg(n ORDER BY value)
FROM (
    SELECT h.agent_key, h.metric, m.month, u.value, sum(u.n)::int8 AS n
    FROM unnest($2::timestamptz[]) AS m(month)
    JOIN kpi_histograms h ON h.tenant_id = $1 AND h.grain = 2
                         AND h.bucket >= m.month AND h.bucket < m.month + interval '1 month'
    CROSS JOIN LATERAL unnest(h.vals, h.counts) AS u(value, n)
    GROUP BY 1, 2, 3, 4
) AS s
GROUP BY agent_key, metric, month";

/// What a compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Tenants whose rollups were computed.
    pub tenants: usize,
    /// Hours computed (new ones and dirty ones again).
    pub hours: usize,
    /// Hours marked dirty, consumed.
    pub marks: usize,
    /// Hours that are over remain to be computed (a catch-up goes on).
    pub behind: bool,
}

/// Computes every tenant's due hours once. Tenants are taken one at a
/// time, each in a repeatable-read transaction under an advisory lock of
/// its own, so two workers share the tenants instead of both computing one.
pub async fn compact(pool: &PgPool) -> Result<Compacted, sqlx::Error> {
    // Marks carry no foreign key (the hot path's insert stays free of the
    // check): those of a deleted tenant are dropped here.
    sqlx::query(
        "DELETE FROM kpi_dirty_hours d
         WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = d.tenant_id)",
    )
    .execute(pool)
    .await?;
    let tenants: Vec<Uuid> = sqlx::query_scalar(TENANTS_DUE).fetch_all(pool).await?;
    let mut done = Compacted::default();
    for tenant_id in tenants {
        // A week per transaction until the tenant is caught up; a tenant
        // another worker holds is that worker's.
        let mut computed = false;
        while let Some(one) = compact_tenant(pool, tenant_id).await? {
            computed = true;
            done.hours += one.hours;
            done.marks += one.marks;
            if !one.behind {
                break;
            }
        }
        done.tenants += usize::from(computed);
    }
    Ok(done)
}

/// One tenant's due hours; `None` when another worker holds it. The lock
/// is taken before the transaction's snapshot, so a worker never computes
/// from a snapshot older than what the previous holder wrote.
pub async fn compact_tenant(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<Option<Compacted>, sqlx::Error> {
    const LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('kpi_rollups'), hashtext($1::text))";
    const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('kpi_rollups'), hashtext($1::text))";
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar(LOCK)
        .bind(tenant_id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let outcome = compact_locked(&mut conn, tenant_id).await;
    let unlocked = sqlx::query_scalar::<_, bool>(UNLOCK)
        .bind(tenant_id.to_string())
        .fetch_one(&mut *conn)
        .await;
    if !matches!(unlocked, Ok(true)) {
        // A connection that may still hold the lock must not go back to
        // the pool; closing it releases the lock.
        conn.close_on_drop();
    }
    outcome.map(Some)
}

async fn compact_locked(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
) -> Result<Compacted, sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    // UTC days and months whatever the server's time zone.
    sqlx::query("SET LOCAL timezone = 'UTC'")
        .execute(&mut *tx)
        .await?;
    // The statements below read ranges of rows: each is planned with its
    // values every run (unnamed statements), never from a plan a connection
    // kept from when the tables were small.
    let (from, cutoff): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(PROGRESS)
        .persistent(false)
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await?;
    let to = cutoff.min(from + Duration::hours(CATCH_UP_HOURS)).max(from);
    let marks: Vec<DateTime<Utc>> = sqlx::query_scalar(MARKED_HOURS)
        .bind(tenant_id)
        .fetch_all(&mut *tx)
        .await?;

    // Whole hours: the new ones, and the marked ones already computed
    // (a mark at or after `to` is an hour not computed yet: it will be
    // computed from rows that include its change).
    let mut ranges: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut hours = 0;
    if to > from {
        ranges.push((from, to));
        hours += usize::try_from((to - from).num_hours()).unwrap_or(0);
    }
    let dirty: Vec<DateTime<Utc>> = marks.iter().copied().filter(|hour| *hour < from).collect();
    for hour in &dirty {
        ranges.push((*hour, *hour + Duration::hours(1)));
    }
    hours += dirty.len();
    let (starts, ends): (Vec<_>, Vec<_>) = ranges.iter().copied().unzip();
    replace_counts(&mut tx, tenant_id, GRAIN_QUARTER, &starts, &ends).await?;
    replace_counts(&mut tx, tenant_id, GRAIN_HOUR, &starts, &ends).await?;

    // Days (and months) that are over by `to` and lost or gained an hour.
    let days = whole_units(&ranges, to, day_start, |d| d + Duration::days(1));
    let day_ends: Vec<_> = days.iter().map(|d| *d + Duration::days(1)).collect();
    replace_counts(&mut tx, tenant_id, GRAIN_DAY, &days, &day_ends).await?;
    replace_histograms(&mut tx, tenant_id, GRAIN_DAY, &days).await?;
    let months = whole_units(
        &days
            .iter()
            .map(|d| (*d, *d + Duration::days(1)))
            .collect::<Vec<_>>(),
        to,
        month_start,
        next_month,
    );
    replace_histograms(&mut tx, tenant_id, GRAIN_MONTH, &months).await?;

    // Repeatable read: this deletes the marks the snapshot saw, no more.
    sqlx::query("DELETE FROM kpi_dirty_hours WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO kpi_rollup_progress (tenant_id, rolled_up_to) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET rolled_up_to = excluded.rolled_up_to",
    )
    .bind(tenant_id)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Compacted {
        tenants: 1,
        hours,
        marks: marks.len(),
        behind: to < cutoff,
    })
}

/// The counts of grain `grain` in the ranges, computed again: quarters from
/// the rows, hours from quarters, days from hours.
async fn replace_counts(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    grain: i16,
    starts: &[DateTime<Utc>],
    ends: &[DateTime<Utc>],
) -> Result<(), sqlx::Error> {
    if starts.is_empty() {
        return Ok(());
    }
    sqlx::query(DELETE_COUNTS)
        .bind(tenant_id)
        .bind(starts)
        .bind(ends)
        .bind(grain)
        .execute(&mut **tx)
        .await?;
    let insert = if grain == GRAIN_QUARTER {
        INSERT_QUARTERS
            .replace("{columns}", COUNT_COLUMNS)
            .replace("{sums}", &count_sums(""))
            .replace("{duration}", DURATION_EXPR)
            .replace("{call_agent}", CALL_AGENT_LOOKUP)
    } else {
        INSERT_COARSER_COUNTS
            .replace("{columns}", COUNT_COLUMNS)
            .replace("{sums}", &count_sums("k."))
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(insert))
        .persistent(false)
        .bind(tenant_id)
        .bind(starts)
        .bind(ends);
    if grain != GRAIN_QUARTER {
        query = query.bind(grain);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

async fn replace_histograms(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    grain: i16,
    buckets: &[DateTime<Utc>],
) -> Result<(), sqlx::Error> {
    if buckets.is_empty() {
        return Ok(());
    }
    sqlx::query(DELETE_HISTOGRAMS)
        .bind(tenant_id)
        .bind(buckets)
        .bind(grain)
        .execute(&mut **tx)
        .await?;
    let insert = if grain == GRAIN_DAY {
        INSERT_DAY_HISTOGRAMS
            .replace("{duration}", DURATION_EXPR)
            .replace("{call_agent}", CALL_AGENT_LOOKUP)
    } else {
        INSERT_MONTH_HISTOGRAMS.to_owned()
    };
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .persistent(false)
        .bind(tenant_id)
        .bind(buckets)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The units (days or months) that `ranges` touch and that are over by
/// `until`, sorted, each once.
fn whole_units(
    ranges: &[(DateTime<Utc>, DateTime<Utc>)],
    until: DateTime<Utc>,
    start_of: fn(DateTime<Utc>) -> DateTime<Utc>,
    next: fn(DateTime<Utc>) -> DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut units = Vec::new();
    for (from, to) in ranges {
        let mut unit = start_of(*from);
        while unit < *to {
            if next(unit) <= until {
                units.push(unit);
            }
            unit = next(unit);
        }
    }
    units.sort_unstable();
    units.dedup();
    units
}

/// Midnight UTC of `at`'s day.
pub fn day_start(at: DateTime<Utc>) -> DateTime<Utc> {
    at.date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(at, |midnight| midnight.and_utc())
}

/// The first instant of `at`'s UTC month.
pub fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Datelike;
    let day = day_start(at);
    day - Duration::days(i64::from(day.day0()))
}

/// The first instant of the UTC month after `at`'s.
pub fn next_month(at: DateTime<Utc>) -> DateTime<Utc> {
    // 32 days from a month's first day always lands in the next month.
    month_start(month_start(at) + Duration::days(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn months_and_days_start_in_utc() {
        assert_eq!(
            month_start(t("2026-02-28T23:59:59Z")),
            t("2026-02-01T00:00:00Z")
        );
        assert_eq!(
            next_month(t("2026-12-31T23:00:00Z")),
            t("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            next_month(t("2026-01-31T00:00:00Z")),
            t("2026-02-01T00:00:00Z")
        );
        assert_eq!(
            day_start(t("2026-03-01T00:00:00Z")),
            t("2026-03-01T00:00:00Z")
        );
    }

    #[test]
    fn only_units_over_by_the_watermark_are_computed() {
        let ranges = [(t("2026-11-29T22:00:00Z"), t("2026-12-01T03:00:00Z"))];
        let days = whole_units(&ranges, t("2026-12-01T03:00:00Z"), day_start, |d| {
            d + Duration::days(1)
        });
        assert_eq!(days, [t("2026-11-29T00:00:00Z"), t("2026-11-30T00:00:00Z")]);
        let months = whole_units(&ranges, t("2026-12-01T03:00:00Z"), month_start, next_month);
        assert_eq!(months, [t("2026-11-01T00:00:00Z")]);
    }
}
