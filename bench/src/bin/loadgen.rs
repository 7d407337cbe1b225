//! Load generator for the inbound pipeline: distinct, correctly signed
//! inbound webhooks against a running webhook-ingress, with a NATS
//! subscriber timing each `runtime.handoff_requested`.
//!
//! `closed` mode: N connections send back to back (throughput).
//! `open` mode: a fixed arrival rate; latency is measured from each
//! request's *scheduled* send time, so a slow server cannot hide by slowing
//! the sender (no coordinated omission).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use tokio::sync::Mutex;

/// The same allocator as the services: the generator shares the machine
/// with what it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Closed,
    Open,
}

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Drives webhook-ingress with signed inbound webhooks"
)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// The ingress base URL; must equal its TWILIO_WEBHOOK_BASE_URL.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    ingress: String,
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    auth_token: String,
    /// The called number (an active phone number with an agent).
    #[arg(long)]
    to: String,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value = "")]
    nats_subject_prefix: String,
    /// Closed loop: concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Open loop: webhooks per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Skipped at the start (not measured) to warm caches and pools; 0s
    /// measures from the first webhook.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Accepted webhooks are also counted per window of this length, so a
    /// decline during the run shows.
    #[arg(long, default_value = "5s", value_parser = shared::config::positive_duration)]
    window: Duration,
    /// Delete this prefix's streams when done (bench runs use a fresh prefix).
    #[arg(long)]
    delete_streams: bool,
}

struct Shared {
    args: Args,
    client: reqwest::Client,
    url: String,
    run_id: u32,
    next: AtomicU64,
    /// CallSid -> scheduled send time, for measured calls.
    sent: Mutex<HashMap<String, Instant>>,
    twiml_us: Mutex<Vec<u64>>,
    handoff_us: Mutex<Vec<u64>>,
    accepted: AtomicU64,
    failed: AtomicU64,
    handoffs: AtomicU64,
    /// When measuring began, and accepted webhooks per window since then.
    measure_from: Instant,
    windows: Vec<AtomicU64>,
}

impl Shared {
    /// Sends one webhook; `scheduled` is when it should have left.
    async fn send(&self, scheduled: Instant, measured: bool) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let call_sid = format!("CA{:08x}{n:024x}", self.run_id);
        let params: Vec<(String, String)> = [
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call_sid.as_str()),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
            ("From", "+14155550100"),
            ("To", self.args.to.as_str()),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let signature =
            shared::twilio::compute_signature(&self.args.auth_token, &self.url, &params);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        if measured {
            self.sent.lock().await.insert(call_sid, scheduled);
        }
        let result = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
            .await;
        let ok = match result {
            Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
            Err(_) => false,
        };
        let elapsed = scheduled.elapsed().as_micros() as u64;
        if ok {
            if measured {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.twiml_us.lock().await.push(elapsed);
                let window = (scheduled
                    .saturating_duration_since(self.measure_from)
                    .as_secs_f64()
                    / self.args.window.as_secs_f64()) as usize;
                if let Some(count) = self.windows.get(window) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::install_crypto_providers();
    let args = Args::parse();
    let url = format!(
        "{}/twilio/webhook/inbound",
        args.ingress.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections.max(256))
        .timeout(Duration::from_secs(30))
        .build()?;
    let nats = async_nats::connect(&args.nats_url).await?;
    let subjects = shared::nats::Subjects::new(&args.nats_subject_prefix);
    let mut handoffs = nats.subscribe(subjects.runtime_handoff_all()).await?;
    nats.flush().await?;
    let start = Instant::now();
    let warm_until = start + args.warmup;
    let end = warm_until + args.duration;
    let window_count = (args.duration.as_secs_f64() / args.window.as_secs_f64()).ceil() as usize;
    let state = Arc::new(Shared {
        client,
        url,
        run_id: rand_u32(),
        next: AtomicU64::new(0),
        sent: Mutex::default(),
        twiml_us: Mutex::default(),
        handoff_us: Mutex::default(),
        accepted: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        handoffs: AtomicU64::new(0),
        measure_from: warm_until,
        windows: (0..window_count).map(|_| AtomicU64::new(0)).collect(),
        args,
    });

    // Handoff subscriber.
    let sub_state = state.clone();
    let subscriber = tokio::spawn(async move {
        while let Some(message) = handoffs.next().await {
            let Ok(h) = serde_json::from_slice::<shared::calls::HandoffRequested>(&message.payload)
            else {
                continue;
            };
            if let Some(at) = sub_state.sent.lock().await.remove(&h.call_sid) {
                sub_state
                    .handoff_us
                    .lock()
                    .await
                    .push(at.elapsed().as_micros() as u64);
                sub_state.handoffs.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    match state.args.mode {
        Mode::Closed => {
            let workers: Vec<_> = (0..state.args.connections)
                .map(|_| {
                    let state = state.clone();
                    tokio::spawn(async move {
                        loop {
                            let now = Instant::now();
                            if now >= end {
                                break;
                            }
                            state.send(now, now >= warm_until).await;
                        }
                    })
                })
                .collect();
            futures::future::join_all(workers).await;
        }
        Mode::Open => {
            let interval = Duration::from_secs_f64(1.0 / state.args.rate.max(1) as f64);
            // Paced by an OS thread: tokio's timer rounds every deadline up
            // to its next millisecond tick, which at 1,000/s would add a
            // constant 0-1 ms (fixed per run) to every latency measured from
            // the scheduled time.
            let (ticks, mut due) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            std::thread::spawn(move || {
                let mut scheduled = start;
                while scheduled < end {
                    std::thread::sleep(scheduled.saturating_duration_since(Instant::now()));
                    if ticks.send(scheduled).is_err() {
                        break;
                    }
                    scheduled += interval;
                }
            });
            let mut in_flight = Vec::new();
            while let Some(at) = due.recv().await {
                let state = state.clone();
                in_flight.push(tokio::spawn(async move {
                    state.send(at, at >= warm_until).await
                }));
            }
            futures::future::join_all(in_flight).await;
        }
    }
    let measured_secs = state.args.duration.as_secs_f64();
    let accepted = state.accepted.load(Ordering::Relaxed);
    // Wait for the handoffs of every accepted webhook (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    while state.handoffs.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    subscriber.abort();
    let mut twiml = state.twiml_us.lock().await.clone();
    let mut handoff = state.handoff_us.lock().await.clone();
    twiml.sort_unstable();
    handoff.sort_unstable();
    let mode = match state.args.mode {
        Mode::Closed => format!("closed loop, {} connections", state.args.connections),
        Mode::Open => format!("open loop, {}/s offered", state.args.rate),
    };
    println!(
        "mode: {mode}, measured {measured_secs:.0}s after {:?} warm-up",
        state.args.warmup
    );
    println!(
        "  webhooks/s accepted:          {:.0}",
        accepted as f64 / measured_secs
    );
    println!(
        "  TwiML latency ms:             p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&twiml, 0.50),
        percentile(&twiml, 0.99),
        percentile(&twiml, 1.0)
    );
    println!(
        "  webhook->handoff latency ms:  p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&handoff, 0.50),
        percentile(&handoff, 0.99),
        percentile(&handoff, 1.0)
    );
    let handoffs_seen = state.handoffs.load(Ordering::Relaxed);
    println!(
        "  accepted {accepted}, handoffs {handoffs_seen}, failed {}  -> {}",
        state.failed.load(Ordering::Relaxed),
        if handoffs_seen == accepted {
            "EQUAL"
        } else {
            "MISMATCH"
        }
    );
    // Per window: a decline as the tables grow shows here. The last window
    // may be partial when the duration is not a multiple of it.
    let window_secs = state.args.window.as_secs_f64();
    let full_windows = (measured_secs / window_secs).floor() as usize;
    let rates: Vec<f64> = state
        .windows
        .iter()
        .take(full_windows.max(1))
        .map(|c| c.load(Ordering::Relaxed) as f64 / window_secs.min(measured_secs))
        .collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "  webhooks/s per {:.0}s window:   {}",
        window_secs,
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // One line for scripts: bench/run.sh builds its side-by-side table
    // from it.
    println!(
        "summary: rate={:.0} twiml_p50={:.2} twiml_p99={:.2} handoff_p50={:.2} handoff_p99={:.2} worst_window_ratio={:.2} accepted={accepted} handoffs={handoffs_seen} failed={}",
        accepted as f64 / measured_secs,
        percentile(&twiml, 0.50),
        percentile(&twiml, 0.99),
        percentile(&handoff, 0.50),
        percentile(&handoff, 0.99),
        if best > 0.0 { worst / best } else { 0.0 },
        state.failed.load(Ordering::Relaxed),
    );
    if state.args.delete_streams && !state.args.nats_subject_prefix.is_empty() {
        let js = async_nats::jetstream::new(nats.clone());
        for name in [
            subjects.calls_stream(),
            subjects.runtime_handoffs_stream(),
            subjects.runtime_events_stream(),
        ] {
            let _ = js.delete_stream(&name).await;
        }
    }
    Ok(())
}

fn rand_u32() -> u32 {
    u32::from_be_bytes(shared::crypto::random_bytes::<4>())
}
