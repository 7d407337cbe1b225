//! Which parts of a KPI period come from the rollups and which from the
//! rows, and the exact percentiles of merged distributions.
//!
//! A rollup is taken only for time the compaction has computed (before
//! `rolled_up_to`) and that no later change marked dirty; everything else
//! in the period is read from the rows. The counts cover each day of the
//! reader's time zone with the largest buckets that fit in it: a UTC day
//! (in UTC), hours, quarter hours (where a zone's day starts on one); so
//! the rows read are the period's ragged ends (under 15 minutes each), the
//! hours not computed yet (the last hour or so) and any dirty hour. The
//! distributions, which need no time zone, use whole UTC months where they
//! fit, whole UTC days elsewhere, and the rows for the rest.

use chrono::{DateTime, Duration, DurationRound, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use shared::kpi_rollups::{GRAIN_DAY, GRAIN_HOUR, GRAIN_QUARTER, month_start, next_month};

type Range = (DateTime<Utc>, DateTime<Utc>);

#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    /// Runs of `kpi_counts` buckets: the grain, and the first bucket and
    /// the end of the last. Each bucket lies within one day of the zone.
    pub counts: Vec<(i16, Range)>,
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
        tz: Tz,
        rolled_up_to: Option<DateTime<Utc>>,
        dirty: &[DateTime<Utc>],
    ) -> Self {
        // Rollups cover nothing at or after this.
        let limit = rolled_up_to.map_or(from, |r| r.min(to)).max(from);
        let is_dirty = |start, end| touches_dirty(dirty, start, end);

        let mut counts: Vec<(i16, Range)> = Vec::new();
        let mut counts_from_rows: Vec<Range> = Vec::new();
        for day in zone_days(from, to, tz) {
            cover(day, limit, dirty, &mut counts, &mut counts_from_rows);
        }

        let mut months = Vec::new();
        let mut days = Vec::new();
        let mut day = ceil(from, Duration::days(1));
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
            counts,
            counts_from_rows: merge(counts_from_rows),
            months,
            days,
            distributions_from_rows,
        }
    }
}

/// The period cut at each midnight of the zone.
fn zone_days(from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz) -> Vec<Range> {
    let mut cuts = vec![from];
    let mut date = from.with_timezone(&tz).date_naive();
    while let Some(next) = date.succ_opt() {
        date = next;
        // A zone whose clocks skip midnight starts that day at the first
        // instant it has.
        let midnight = date.and_time(NaiveTime::MIN);
        let Some(start) = tz.from_local_datetime(&midnight).earliest().or_else(|| {
            tz.from_local_datetime(&(midnight + Duration::hours(1)))
                .earliest()
        }) else {
            continue;
        };
        let start = start.with_timezone(&Utc);
        if start >= to {
            break;
        }
        if start > from {
            cuts.push(start);
        }
    }
    cuts.push(to);
    cuts.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Whether `[start, end)` holds an hour of `dirty`.
fn touches_dirty(dirty: &[DateTime<Utc>], start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
    dirty
        .iter()
        .any(|h| *h < end && *h + Duration::hours(1) > start)
}

/// `[start, end)` covered greedily with the largest aligned bucket that is
/// computed (ends by `limit`) and clean (a UTC day, an hour, a quarter
/// hour); what none covers (all of it from `limit` on) goes to `rows`.
fn cover(
    (start, end): Range,
    limit: DateTime<Utc>,
    dirty: &[DateTime<Utc>],
    counts: &mut Vec<(i16, Range)>,
    rows: &mut Vec<Range>,
) {
    let grains = [
        (GRAIN_DAY, Duration::days(1)),
        (GRAIN_HOUR, Duration::hours(1)),
        (GRAIN_QUARTER, Duration::minutes(15)),
    ];
    let mut at = start;
    'next: while at < end {
        if at >= limit {
            // Past what is computed: the rest from the rows.
            rows.push((at, end));
            return;
        }
        for (grain, len) in grains {
            let bucket_end = at + len;
            if floor(at, len) == at
                && bucket_end <= end.min(limit)
                && !touches_dirty(dirty, at, bucket_end)
            {
                match counts.last_mut() {
                    Some((g, run)) if *g == grain && run.1 == at => run.1 = bucket_end,
                    _ => counts.push((grain, (at, bucket_end))),
                }
                at = bucket_end;
                continue 'next;
            }
        }
        let quarter = Duration::minutes(15);
        let next = (floor(at, quarter) + quarter).min(end);
        rows.push((at, next));
        at = next;
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

    /// Postgres's `percentile_cont` for each of `ps`: the value at
    /// `p * (n - 1)` in sorted order, interpolated between its neighbours;
    /// `None` when empty. Sorts once.
    pub fn percentiles<const N: usize>(mut self, ps: [f64; N]) -> [Option<f64>; N] {
        self.values.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let total: i64 = self.values.iter().map(|(_, n)| n).sum();
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
        ps.map(|p| {
            if total <= 0 {
                return None;
            }
            // Counts stay far below 2^52: f64 holds them exactly.
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
            let (position, lower) = {
                let position = p * (total - 1) as f64;
                (position, position.floor() as i64)
            };
            let low = value_at(lower);
            let high = value_at((lower + 1).min(total - 1));
            #[allow(clippy::cast_precision_loss)]
            let fraction = position - lower as f64;
            Some(low + (high - low) * fraction)
        })
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
        let plan = ReadPlan::new(from, to, chrono_tz::UTC, None, &[]);
        assert_eq!(plan.counts_from_rows, [(from, to)]);
        assert_eq!(plan.distributions_from_rows, [(from, to)]);
        assert!(plan.counts.is_empty());
        assert!(plan.months.is_empty() && plan.days.is_empty());
    }

    #[test]
    fn ragged_ends_dirty_hours_and_the_uncomputed_tail_come_from_the_rows() {
        let from = t("2026-10-30T10:07:00Z");
        let to = t("2026-12-02T12:34:00Z");
        let rolled = t("2026-12-02T11:00:00Z");
        let dirty = [t("2026-11-15T08:00:00Z"), t("2026-12-02T11:00:00Z")];
        let plan = ReadPlan::new(from, to, chrono_tz::UTC, Some(rolled), &dirty);
        assert_eq!(
            plan.counts_from_rows,
            [
                (from, t("2026-10-30T10:15:00Z")),
                (t("2026-11-15T08:00:00Z"), t("2026-11-15T09:00:00Z")),
                (rolled, to),
            ]
        );
        // In UTC: quarters to the hour, hours to midnight, then days; the
        // dirty day in hours around its dirty hour.
        assert_eq!(
            plan.counts[..3],
            [
                (
                    GRAIN_QUARTER,
                    (t("2026-10-30T10:15:00Z"), t("2026-10-30T11:00:00Z"))
                ),
                (
                    GRAIN_HOUR,
                    (t("2026-10-30T11:00:00Z"), t("2026-10-31T00:00:00Z"))
                ),
                (
                    GRAIN_DAY,
                    (t("2026-10-31T00:00:00Z"), t("2026-11-15T00:00:00Z"))
                ),
            ]
        );
        assert!(plan.counts.contains(&(
            GRAIN_HOUR,
            (t("2026-11-15T09:00:00Z"), t("2026-11-16T00:00:00Z"))
        )));
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
    fn each_bucket_lies_within_one_day_of_the_zone() {
        let from = t("2026-03-20T00:00:00Z");
        let to = t("2026-04-10T00:00:00Z");
        for tz in [
            chrono_tz::Europe::Paris,
            chrono_tz::Asia::Kolkata,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::America::New_York,
        ] {
            let plan = ReadPlan::new(from, to, tz, Some(to), &[]);
            assert!(plan.counts_from_rows.is_empty(), "{tz}: all computed");
            let mut at = from;
            for (grain, (start, end)) in &plan.counts {
                assert_eq!(*start, at, "{tz}: runs are contiguous");
                let len = match *grain {
                    GRAIN_DAY => Duration::days(1),
                    GRAIN_HOUR => Duration::hours(1),
                    _ => Duration::minutes(15),
                };
                let mut bucket = *start;
                while bucket < *end {
                    let first = bucket.with_timezone(&tz).date_naive();
                    let last = (bucket + len - Duration::nanoseconds(1))
                        .with_timezone(&tz)
                        .date_naive();
                    assert_eq!(first, last, "{tz}: {bucket} crosses a midnight");
                    bucket += len;
                }
                at = *end;
            }
            assert_eq!(at, to);
        }
        // Paris (whole hours) needs no quarter; Kathmandu (+5:45) does.
        let paris = ReadPlan::new(from, to, chrono_tz::Europe::Paris, Some(to), &[]);
        assert!(paris.counts.iter().all(|(g, _)| *g == GRAIN_HOUR));
        let kathmandu = ReadPlan::new(from, to, chrono_tz::Asia::Kathmandu, Some(to), &[]);
        assert!(kathmandu.counts.iter().any(|(g, _)| *g == GRAIN_QUARTER));
    }

    #[test]
    fn whole_clean_months_replace_their_days() {
        let from = t("2025-12-02T00:00:00Z");
        let to = t("2026-12-02T00:00:00Z");
        let plan = ReadPlan::new(from, to, chrono_tz::UTC, Some(to), &[]);
        assert_eq!(plan.months.len(), 11, "January to November");
        assert_eq!(plan.months[0], t("2026-01-01T00:00:00Z"));
        assert_eq!(
            plan.days.len(),
            30 + 1,
            "December 2025 from the 2nd, and 2026-12-01"
        );
        assert!(plan.distributions_from_rows.is_empty());
        assert!(plan.counts_from_rows.is_empty());
        assert_eq!(plan.counts, [(GRAIN_DAY, (from, to))]);
    }

    #[test]
    fn percentiles_match_percentile_cont() {
        assert_eq!(Distribution::default().percentiles([0.5]), [None]);
        // 60, 120, 30, 300 as in the hand-computed KPI test: p50 = 90,
        // p95 = 120 + 0.85 * 180 = 273.
        let mut d = Distribution::default();
        d.add(vec![30.0, 120.0], Some(vec![1, 1]));
        d.add(vec![300.0, 60.0], None);
        let [p50, p95] = d.percentiles([0.5, 0.95]);
        assert_eq!(p50, Some(90.0));
        assert!((p95.expect("p95") - 273.0).abs() < 1e-9);
        let mut repeated = Distribution::default();
        repeated.add(vec![1.0, 2.0], Some(vec![3, 1]));
        assert_eq!(repeated.percentiles([0.5, 1.0]), [Some(1.0), Some(2.0)]);
    }
}
