//! Which parts of a KPI period come from the rollups and which from the
//! rows, and the exact percentiles of merged distributions.
//!
//! A rollup is taken only for time the compaction has computed (before
//! `rolled_up_to`) and that no later change marked dirty; everything else
//! in the period is read from the rows. The counts use quarter hours, so
//! the rows read are the period's ragged ends (under 15 minutes each), the
//! hours not computed yet (the last hour or so) and any dirty hour. The
//! distributions use whole UTC months where they fit, whole UTC days
//! elsewhere, and the rows for the rest.

use chrono::{DateTime, Duration, DurationRound, Utc};
use shared::kpi_rollups::{day_start, month_start, next_month};

type Range = (DateTime<Utc>, DateTime<Utc>);

#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    /// Quarters `[start, end)` read from `kpi_quarters` (empty when start
    /// equals end), except those of `dirty_hours`.
    pub quarters: Range,
    pub dirty_hours: Vec<DateTime<Utc>>,
    /// Read from the rows for the counts.
    pub counts_from_rows: Vec<Range>,
    /// Whole UTC months and days read from `kpi_histograms`.
    pub months: Vec<DateTime<Utc>>,
    pub days: Vec<DateTime<Utc>>,
    /// Read from the rows for the distributions.
    pub distributions_from_rows: Vec<Range>,
}

impl ReadPlan {
    /// `dirty` must be sorted; hours of it outside the period are ignored.
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        rolled_up_to: Option<DateTime<Utc>>,
        dirty: &[DateTime<Utc>],
    ) -> Self {
        let hour = Duration::hours(1);
        let quarter = Duration::minutes(15);
        // Rollups cover nothing at or after this.
        let limit = rolled_up_to.map_or(from, |r| r.min(to)).max(from);
        let is_dirty = |start: DateTime<Utc>, end: DateTime<Utc>| {
            dirty.iter().any(|h| *h < end && *h + hour > start)
        };

        let qa = ceil(from, quarter);
        let qb = floor(limit, quarter).max(qa);
        let dirty_hours: Vec<_> = dirty
            .iter()
            .copied()
            .filter(|h| *h < qb && *h + hour > qa)
            .collect();
        let mut covered: Vec<Range> = Vec::new();
        let mut at = qa;
        for h in &dirty_hours {
            if *h > at {
                covered.push((at, *h));
            }
            at = at.max(*h + hour);
        }
        if qb > at {
            covered.push((at, qb));
        }
        let counts_from_rows = subtract((from, to), &covered);

        let mut months = Vec::new();
        let mut days = Vec::new();
        let mut day = day_start(ceil(from, Duration::days(1)));
        let day_limit = floor(limit, Duration::days(1));
        let mut hist_covered: Vec<Range> = Vec::new();
        while day < day_limit {
            let month_end = next_month(day);
            if month_start(day) == day && month_end <= day_limit && !is_dirty(day, month_end) {
                months.push(day);
                hist_covered.push((day, month_end));
                day = month_end;
                continue;
            }
            let day_end = day + Duration::days(1);
            if !is_dirty(day, day_end) {
                days.push(day);
                hist_covered.push((day, day_end));
            }
            day = day_end;
        }
        let distributions_from_rows = subtract((from, to), &merge(hist_covered));
        ReadPlan {
            quarters: (qa, qb),
            dirty_hours,
            counts_from_rows,
            months,
            days,
            distributions_from_rows,
        }
    }
}

fn floor(at: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    at.duration_trunc(unit).unwrap_or(at)
}

fn ceil(at: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    let down = floor(at, unit);
    if down == at { at } else { down + unit }
}

/// Adjacent ranges joined (input sorted, not overlapping).
fn merge(ranges: Vec<Range>) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

/// `whole` minus `covered` (sorted, inside `whole`, not overlapping).
fn subtract(whole: Range, covered: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut at = whole.0;
    for (s, e) in covered {
        if *s > at {
            out.push((at, *s));
        }
        at = at.max(*e);
    }
    if whole.1 > at {
        out.push((at, whole.1));
    }
    out
}

/// Values with their counts, from histograms and single rows.
#[derive(Debug, Default)]
pub struct Distribution {
    values: Vec<(f64, i64)>,
}

impl Distribution {
    /// `counts` absent: each value once.
    pub fn add(&mut self, vals: Vec<f64>, counts: Option<Vec<i64>>) {
        match counts {
            Some(counts) => self.values.extend(vals.into_iter().zip(counts)),
            None => self.values.extend(vals.into_iter().map(|v| (v, 1))),
        }
    }

    /// Postgres's `percentile_cont`: the value at `p * (n - 1)` in sorted
    /// order, interpolated between its neighbours; `None` when empty.
    pub fn percentile(&mut self, p: f64) -> Option<f64> {
        self.values.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let total: i64 = self.values.iter().map(|(_, n)| n).sum();
        if total <= 0 {
            return None;
        }
        // Counts stay far below 2^52: f64 holds them exactly.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let (position, lower) = {
            let position = p * (total - 1) as f64;
            (position, position.floor() as i64)
        };
        let value_at = |rank: i64| {
            let mut seen = 0;
            for (value, n) in &self.values {
                seen += n;
                if rank < seen {
                    return *value;
                }
            }
            self.values.last().map_or(0.0, |(v, _)| *v)
        };
        let low = value_at(lower);
        let high = value_at((lower + 1).min(total - 1));
        #[allow(clippy::cast_precision_loss)]
        let fraction = position - lower as f64;
        Some(low + (high - low) * fraction)
    }
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
    fn nothing_computed_reads_everything_from_the_rows() {
        let (from, to) = (t("2026-11-01T10:07:00Z"), t("2026-11-03T00:00:00Z"));
        let plan = ReadPlan::new(from, to, None, &[]);
        assert_eq!(plan.counts_from_rows, [(from, to)]);
        assert_eq!(plan.distributions_from_rows, [(from, to)]);
        assert!(plan.months.is_empty() && plan.days.is_empty());
        assert_eq!(plan.quarters.0, plan.quarters.1);
    }

    #[test]
    fn ragged_ends_dirty_hours_and_the_uncomputed_tail_come_from_the_rows() {
        let from = t("2026-10-30T10:07:00Z");
        let to = t("2026-12-02T12:34:00Z");
        let rolled = t("2026-12-02T11:00:00Z");
        let dirty = [t("2026-11-15T08:00:00Z"), t("2026-12-02T11:00:00Z")];
        let plan = ReadPlan::new(from, to, Some(rolled), &dirty);
        assert_eq!(plan.quarters, (t("2026-10-30T10:15:00Z"), rolled));
        assert_eq!(plan.dirty_hours, [t("2026-11-15T08:00:00Z")]);
        assert_eq!(
            plan.counts_from_rows,
            [
                (from, t("2026-10-30T10:15:00Z")),
                (t("2026-11-15T08:00:00Z"), t("2026-11-15T09:00:00Z")),
                (rolled, to),
            ]
        );
        // November holds a dirty hour: its days instead, but the 15th.
        assert!(plan.months.is_empty());
        assert_eq!(plan.days.first(), Some(&t("2026-10-31T00:00:00Z")));
        assert!(!plan.days.contains(&t("2026-11-15T00:00:00Z")));
        assert_eq!(plan.days.last(), Some(&t("2026-12-01T00:00:00Z")));
        assert_eq!(
            plan.distributions_from_rows,
            [
                (from, t("2026-10-31T00:00:00Z")),
                (t("2026-11-15T00:00:00Z"), t("2026-11-16T00:00:00Z")),
                (t("2026-12-02T00:00:00Z"), to),
            ]
        );
    }

    #[test]
    fn whole_clean_months_replace_their_days() {
        let from = t("2025-12-02T00:00:00Z");
        let to = t("2026-12-02T00:00:00Z");
        let plan = ReadPlan::new(from, to, Some(to), &[]);
        assert_eq!(plan.months.len(), 11, "January to November");
        assert_eq!(plan.months[0], t("2026-01-01T00:00:00Z"));
        assert_eq!(
            plan.days.len(),
            30 + 1,
            "December 2025 from the 2nd, and 2026-12-01"
        );
        assert!(plan.distributions_from_rows.is_empty());
        assert!(plan.counts_from_rows.is_empty());
    }

    #[test]
    fn percentiles_match_percentile_cont() {
        let mut d = Distribution::default();
        assert_eq!(d.percentile(0.5), None);
        // 60, 120, 30, 300 as in the hand-computed KPI test: p50 = 90,
        // p95 = 120 + 0.85 * 180 = 273.
        d.add(vec![30.0, 120.0], Some(vec![1, 1]));
        d.add(vec![300.0, 60.0], None);
        assert_eq!(d.percentile(0.5), Some(90.0));
        assert!((d.percentile(0.95).expect("p95") - 273.0).abs() < 1e-9);
        let mut repeated = Distribution::default();
        repeated.add(vec![1.0, 2.0], Some(vec![3, 1]));
        assert_eq!(repeated.percentile(0.5), Some(1.0));
        assert_eq!(repeated.percentile(1.0), Some(2.0));
    }
}
