//! `login-flood`: does a flood of bad logins starve other requests?
//!
//! Against a running api it first times `GET /health` alone (the
//! machine's own figure), then sends bad logins at a fixed rate (open
//! loop: distinct emails, one wrong password; every login comes from this
//! one client address) while timing `GET /health` on a connection of its
//! own, and prints the login answers (401 = argon2 ran, 429 = throttled)
//! and health latency p50/p99/max. `bench/login-flood.sh` runs it against
//! a release api twice: with throttling as configured and with
//! `LOGIN_MAX_FAILURES_PER_IP` raised so that argon2 runs for every login.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(
    name = "login-flood",
    about = "Health latency during a flood of bad logins"
)]
struct Args {
    /// Base URL of the api, e.g. http://127.0.0.1:4107.
    #[arg(long)]
    api_url: String,
    /// Bad logins per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// How long the flood lasts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long health is timed with no flood first.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Pause between two health probes (one at a time).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    health_every: Duration,
    /// Most logins waiting for an answer at once; a login due while this
    /// many wait is counted `skipped` (keeps the client's sockets bounded).
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// Printed with the results.
    #[arg(long, default_value = "")]
    label: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50, p99 and max of `samples`, in ms.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        ms(samples[i.min(samples.len() - 1)])
    };
    (at(0.50), at(0.99), ms(samples[samples.len() - 1]))
}

/// Times `GET /health` one request after another until `until`.
async fn probe_health(url: String, every: Duration, until: Instant) -> (Vec<Duration>, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut samples = Vec::new();
    let mut failures = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let started = Instant::now();
        match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => samples.push(started.elapsed()),
            _ => failures += 1,
        }
    }
    (samples, failures)
}

#[derive(Debug, Default)]
struct Logins {
    by_status: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::install_crypto_providers();
    let args = Args::parse();
    let base = args.api_url.trim_end_matches('/').to_owned();
    let health_url = format!("{base}/health");
    let login_url = format!("{base}/auth/login");
    let label = if args.label.is_empty() {
        String::new()
    } else {
        format!(" [{}]", args.label)
    };

    let (mut baseline, baseline_failures) = probe_health(
        health_url.clone(),
        args.health_every,
        Instant::now() + args.baseline,
    )
    .await;
    let n = baseline.len();
    let (p50, p99, max) = percentiles(&mut baseline);
    println!(
        "login-flood{label}: health with no flood: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({n} probes, {baseline_failures} failed)"
    );

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("HTTP client")?;
    let logins = Arc::new(Mutex::new(Logins::default()));
    let permits = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let started = Instant::now();
    let until = started + args.duration;
    let health = tokio::spawn(probe_health(health_url, args.health_every, until));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut skipped = 0u64;
    let mut tasks = Vec::new();
    while Instant::now() < until {
        tick.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        sent += 1;
        let body = json!({
            "email": format!("flood-{run}-{sent}@example.com"),
            "password": "not-the-password",
        });
        let (client, url, logins) = (client.clone(), login_url.clone(), logins.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let status = match client.post(&url).json(&body).send().await {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(err) if err.is_timeout() => "client timeout".to_owned(),
                Err(_) => "connection error".to_owned(),
            };
            let mut l = logins.lock().unwrap_or_else(|e| e.into_inner());
            *l.by_status.entry(status).or_default() += 1;
            l.latencies.push(t0.elapsed());
            drop(permit);
        }));
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let (mut health_samples, health_failures) = health.await.context("health task")?;
    for t in tasks {
        let _ = t.await;
    }
    let drained_secs = started.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *logins.lock().unwrap_or_else(|e| e.into_inner()));
    let answered: u64 = l.by_status.values().sum();
    let (lp50, lp99, lmax) = percentiles(&mut l.latencies);
    let n = health_samples.len();
    let (p50, p99, max) = percentiles(&mut health_samples);
    println!(
        "login-flood{label}: {} bad logins/s for {flood_secs:.1} s from one address: sent {sent}, skipped {skipped} (client cap {}), answered {answered} {:?}, all answered after {drained_secs:.1} s; login latency p50 {lp50:.1} ms, p99 {lp99:.1} ms, max {lmax:.1} ms",
        args.rate, args.max_in_flight, l.by_status
    );
    println!(
        "login-flood{label}: health during the flood: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({n} probes, {health_failures} failed)"
    );
    Ok(())
}
