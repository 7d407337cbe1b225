//! One retention purge, timed: `shared::retention::purge`, the function the
//! dispatch-worker runs every `RETENTION_PURGE_INTERVAL`, against
//! `DATABASE_URL`, at the worker's pace (batch size and duty). Prints what it deleted
//! and how fast, for `bench/purge.sh`:
//! `purge: calls=.. rows=.. seconds=.. rows_per_s=.. calls_per_s=..`.
//!
//! `--settle` instead brings a freshly loaded database to the state of a
//! deployment that has run all along: the KPI rollups of its past hours
//! computed (the dispatch-worker does it as each hour ends), no hour left
//! marked.

use std::time::Instant;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "retention-purge",
    about = "Runs one retention purge and times it"
)]
struct Args {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Calls per transaction (`RETENTION_PURGE_BATCH`).
    #[arg(long, default_value_t = shared::retention::Pace::DEFAULT.batch)]
    batch: i64,
    /// The share of the time batches may fill (`RETENTION_PURGE_DUTY`).
    #[arg(long, default_value_t = shared::retention::Pace::DEFAULT.duty, value_parser = shared::config::share_of_time)]
    duty: f64,
    /// Compute the KPI rollups until nothing is due, then exit.
    #[arg(long)]
    settle: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await?;
    if args.settle {
        let started = Instant::now();
        let mut hours = 0;
        loop {
            let done = shared::kpi_rollups::compact(&pool).await?;
            hours += done.hours;
            if done.hours == 0 && done.marks == 0 && !done.behind {
                break;
            }
        }
        println!(
            "settled: {hours} hours of rollups computed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let started = Instant::now();
    let run = shared::retention::purge(
        &pool,
        shared::retention::Pace {
            batch: args.batch,
            duty: args.duty,
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(!run.skipped, "another purge held the run lock");
    let (mut calls, mut rows) = (0i64, 0i64);
    for (_, p) in &run.tenants {
        calls += p.calls;
        rows += p.calls
            + p.events
            + p.transcript_segments
            + p.recordings
            + p.tool_executions
            + p.runtime_dispatches;
    }
    println!(
        "purge: calls={calls} rows={rows} seconds={seconds:.1} rows_per_s={:.0} calls_per_s={:.0}",
        rows as f64 / seconds,
        calls as f64 / seconds
    );
    Ok(())
}
