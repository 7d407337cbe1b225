//! Fault tests of the inbound pipeline with the real binaries: a steady
//! stream of distinct, correctly signed inbound webhooks (200/s for 20 s)
//! drives `webhook-ingress` while one fault at a time hits the system. Every
//! suite runs on servers it starts itself (a Postgres cluster from `initdb`,
//! nats-server on private ports and stores), never the machine's shared
//! ones, one suite at a time:
//!
//! - `nothing_accepted_is_lost_under_faults`, one NATS server: a
//!   dispatch-worker SIGKILLed and started again; NATS restarted; NATS
//!   losing its store (killed, store deleted, started empty); the same with
//!   both dispatch-workers killed alongside and the runtime away; NATS frozen
//!   30 s (SIGSTOP, SIGCONT); every database connection terminated, twice;
//!   SIGTERM to the ingress and a dispatch-worker, each started again;
//! - `..._when_postgres_crashes`: `pg_ctl stop -m immediate`, started again
//!   5 s later (WAL recovery, every pooled connection broken);
//! - `..._when_a_cluster_node_is_lost`: a three-node JetStream cluster, the
//!   streams replicated three times; the node leading the calls stream is
//!   SIGKILLed and started again 10 s later;
//! - `every_webhook_event_is_delivered_through_a_killed_worker_and_a_nats_restart`:
//!   tenant event webhooks, 2,000 events in flight while one of two
//!   automation-workers is SIGKILLed and NATS restarts: every event reaches
//!   the receiver at least once, copies counted and printed.
//!
//! After each, once the system settles, every webhook answered 200 must have
//! exactly one call session, one runtime dispatch and one
//! `runtime.handoff_requested` message in the stream runtimes consume (a
//! handoff may appear twice after NATS lost its store: the claim decides),
//! with no duplicate event. Each fault prints its counts, answer times, the
//! time to the first handoff after the fault and the time to settle.
//!
//! Two dispatch-worker instances run throughout, sharing the durable
//! consumer and the outbox relay: both must do part of the work, and the
//! checks above prove neither did anything twice.
//!
//! Run alone with `cargo test -p e2e --test faults -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::testing::TestApp;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use sqlx::PgPool;
use uuid::Uuid;

const AUTH_TOKEN: &str = "fault-test-twilio-token";
const RATE_PER_SECOND: u64 = 200;
const LOAD_SECONDS: u64 = 20;

use shared::testing::free_port;

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} failed");
}

/// A binary of ours, restartable with the same settings.
struct Service {
    name: &'static str,
    env: Vec<(String, String)>,
    child: Option<Child>,
    port: u16,
    /// Where readiness and metrics are served: the ingress has a port of
    /// its own for them (`OPS_LISTEN_ADDR`), the others serve them on `port`.
    ops_port: u16,
}

impl Service {
    fn new(name: &'static str, env: Vec<(String, String)>) -> Self {
        let port = free_port();
        let ops_port = if name == "webhook-ingress" {
            free_port()
        } else {
            port
        };
        Self {
            name,
            env,
            child: None,
            port,
            ops_port,
        }
    }

    async fn start(&mut self) {
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("fault-{}-{}.log", self.name, self.port)),
        )
        .expect("log file");
        let child = Command::new(e2e::binary(self.name))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .env("OPS_LISTEN_ADDR", format!("127.0.0.1:{}", self.ops_port))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/health/ready", self.ops_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(resp) = reqwest::get(&url).await
                && resp.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not become ready", self.name);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "-KILL");
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the graceful exit.
    async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "-TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "{} exited with {status} after SIGTERM",
                        self.name
                    );
                    return;
                }
                assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A service's `/health/ready` status and body.
async fn readiness(service: &Service) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/health/ready", service.ops_port);
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("readiness");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A NATS server of this test's own, on a private port and store.
struct PrivateNats {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    async fn start() -> Self {
        let store = std::env::temp_dir().join(format!("fault-nats-{}", Uuid::new_v4()));
        let mut nats = Self {
            port: free_port(),
            store,
            child: None,
        };
        nats.spawn().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new(shared::testing::nats_server::executable())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last_error = match async_nats::connect(self.url()).await {
                Ok(client) if client.server_info().jetstream => return,
                Ok(_) => "JetStream not enabled".to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "private NATS did not start: {last_error}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "-TERM");
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// What lazy fsync and a power cut do: killed, its store gone, started
    /// empty (no streams, no consumers, none of the messages it acked).
    async fn lose_store(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "-KILL");
            let _ = child.wait();
        }
        std::fs::remove_dir_all(&self.store).expect("delete the NATS store");
        self.spawn().await;
    }

    /// The process stopped (SIGSTOP): its connections stay open and nothing
    /// answers on them, until [`Self::thaw`].
    fn freeze(&self) {
        signal(self.child.as_ref().expect("NATS runs"), "-STOP");
    }

    fn thaw(&self) {
        signal(self.child.as_ref().expect("NATS runs"), "-CONT");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A three-node JetStream cluster of this test's own on loopback ports,
/// each node with its own store.
struct NatsCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    name: String,
    port: u16,
    cluster_port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    async fn start() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let nodes = (0..3)
            .map(|i| ClusterNode {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                store: std::env::temp_dir().join(format!("fault-nats-{id}-n{i}")),
                child: None,
            })
            .collect();
        let mut cluster = Self { nodes };
        for i in 0..3 {
            cluster.spawn(i);
        }
        // Up once a stream replicated on all three nodes can be created.
        let deadline = Instant::now() + Duration::from_secs(60);
        let js = jetstream::new(connect_bus(&cluster.url()).await);
        let probe = format!("probe_{id}");
        loop {
            let created = js
                .create_stream(jetstream::stream::Config {
                    name: probe.clone(),
                    subjects: vec![format!("{probe}.>")],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string());
            if created.is_ok() {
                let _ = js.delete_stream(&probe).await;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster did not form: {created:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &mut self.nodes[i];
        let child = Command::new(shared::testing::nats_server::executable())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &node.port.to_string(),
                "-js",
                "-n",
                &node.name,
            ])
            .args(["--cluster_name", "faults"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
            ])
            .args(["--routes", &routes])
            .arg("-sd")
            .arg(&node.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        node.child = Some(child);
    }

    /// Every node's URL, as the services are given them.
    fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node leading `stream` (its Raft group's leader).
    async fn leader_of(&self, stream: &str) -> usize {
        let js = jetstream::new(connect_bus(&self.url()).await);
        let mut stream = js.get_stream(stream).await.expect("stream");
        let info = stream.info().await.expect("stream info");
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("the stream has a leader");
        self.nodes
            .iter()
            .position(|n| n.name == leader)
            .expect("the leader is one of ours")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal(&child, "-KILL");
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&node.store);
        }
    }
}

/// The bus a harness runs on.
enum Bus {
    Single(PrivateNats),
    Cluster(NatsCluster),
}

impl Bus {
    fn url(&self) -> String {
        match self {
            Bus::Single(nats) => nats.url(),
            Bus::Cluster(cluster) => cluster.url(),
        }
    }

    fn replicas(&self) -> &'static str {
        match self {
            Bus::Single(_) => "1",
            Bus::Cluster(_) => "3",
        }
    }

    fn single(&mut self) -> &mut PrivateNats {
        match self {
            Bus::Single(nats) => nats,
            Bus::Cluster(_) => panic!("this fault needs the single-server bus"),
        }
    }

    fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Bus::Cluster(cluster) => cluster,
            Bus::Single(_) => panic!("this fault needs the cluster"),
        }
    }
}

/// A client of the bus at `urls` (comma-separated, as `NATS_URL`).
async fn connect_bus(urls: &str) -> async_nats::Client {
    let servers: Vec<async_nats::ServerAddr> = shared::nats::server_list(urls)
        .iter()
        .map(|u| u.parse().expect("server URL"))
        .collect();
    // The servers may still be starting.
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .expect("nats")
}

/// A Postgres cluster of this test's own (`initdb` in a temporary folder,
/// Debian's server binaries, a private port), so it can be crashed.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// The server binary `name` of the newest Postgres installed.
    fn bin(name: &str) -> PathBuf {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's Postgres server (scripts/services.sh installs it)")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        versions.sort_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        });
        versions
            .pop()
            .expect("a Postgres version")
            .join("bin")
            .join(name)
    }

    /// Postgres refuses to run as root: as root, run it as `postgres`.
    fn command(name: &str) -> Command {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if is_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(Self::bin(name));
            command
        } else {
            Command::new(Self::bin(name))
        }
    }

    fn run(mut command: Command, what: &str) {
        let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("fault-pg-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("data folder");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        let pg = Self {
            dir,
            port: free_port(),
        };
        let mut initdb = Self::command("initdb");
        initdb
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(pg.dir.join("data"));
        Self::run(initdb, "initdb");
        pg.up();
        pg
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    fn up(&self) {
        let mut start = Self::command("pg_ctl");
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=100",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "start"]);
        Self::run(start, "pg_ctl start");
    }

    /// A crash: no checkpoint, every connection cut; the next start replays
    /// the WAL.
    fn crash(&self) {
        let mut stop = Self::command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        Self::run(stop, "pg_ctl stop -m immediate");
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// A pool on the private cluster, migrated.
    async fn migrated_pool(&self) -> PgPool {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url())
            .await
            .expect("private Postgres");
        shared::db::MIGRATOR.run(&pool).await.expect("migrations");
        pool
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut stop = Self::command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One fault suite at a time: each drives 200 webhooks/s through several
/// processes, and two at once on a small machine would measure each other.
static ONE_SUITE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Default)]
struct LoadResult {
    sent: u64,
    accepted: HashSet<String>,
    unavailable: u64,
    other: HashMap<String, u64>,
    /// How long each answered webhook took, from its send.
    latencies: Vec<Duration>,
}

impl LoadResult {
    /// The `q` quantile of the answer times.
    fn latency(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
        sorted.get(index).copied().unwrap_or_default()
    }
}

/// Sends `RATE_PER_SECOND` distinct inbound webhooks for `LOAD_SECONDS`,
/// open loop (each on its own task, so a slow answer does not slow the sender).
async fn drive_load(ingress_port: u16, to: String, result: Arc<Mutex<LoadResult>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{ingress_port}/twilio/webhook/inbound");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SECOND));
    let mut tasks = Vec::new();
    for _ in 0..RATE_PER_SECOND * LOAD_SECONDS {
        tick.tick().await;
        let call_sid = format!("CA{}", Uuid::new_v4().simple());
        let params: Vec<(String, String)> = [
            ("CallSid", call_sid.clone()),
            (
                "AccountSid",
                "AC00000000000000000000000000000000".to_owned(),
            ),
            ("From", "+14155550100".to_owned()),
            ("To", to.clone()),
            ("CallStatus", "ringing".to_owned()),
            ("Direction", "inbound".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Signed as Twilio signs it.
        let signature = shared::twilio::compute_signature(AUTH_TOKEN, &url, &params);
        let request = client
            .post(&url)
            .header("x-twilio-signature", signature)
            .form(&params);
        let result = result.clone();
        tasks.push(tokio::spawn(async move {
            let sent_at = Instant::now();
            let outcome = request.send().await;
            let took = sent_at.elapsed();
            let mut r = result.lock().expect("lock");
            r.sent += 1;
            match outcome {
                Ok(resp) if resp.status().as_u16() == 200 => {
                    r.accepted.insert(call_sid);
                    r.latencies.push(took);
                }
                Ok(resp) if resp.status().as_u16() == 503 => r.unavailable += 1,
                Ok(resp) => *r.other.entry(resp.status().to_string()).or_default() += 1,
                Err(e) => {
                    let kind = if e.is_connect() {
                        "connect error"
                    } else if e.is_timeout() {
                        "timeout"
                    } else {
                        "other error"
                    };
                    *r.other.entry(kind.to_owned()).or_default() += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("request task");
    }
}

struct Counts {
    sessions: i64,
    dispatches: i64,
    /// Accepted calls with a handoff message in the stream now. A handoff
    /// claimed before NATS lost its store is gone from it, rightly: only
    /// pending dispatches are published again.
    in_stream: HashSet<String>,
    duplicate_handoffs: u64,
}

async fn count(pool: &PgPool, nats_url: &str, prefix: &str, accepted: &HashSet<String>) -> Counts {
    let sids: Vec<String> = accepted.iter().cloned().collect();
    let sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_sessions WHERE call_sid = ANY($1)")
            .bind(&sids)
            .fetch_one(pool)
            .await
            .expect("sessions");
    let dispatches: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runtime_dispatches d JOIN call_sessions c ON c.id = d.call_id WHERE c.call_sid = ANY($1)",
    )
    .bind(&sids)
    .fetch_one(pool)
    .await
    .expect("dispatches");

    // Read the whole handoff stream, as a runtime subscriber would.
    let js = jetstream::new(connect_bus(nats_url).await);
    let stream = js
        .get_stream(shared::nats::Subjects::new(prefix).runtime_handoffs_stream())
        .await
        .expect("handoff stream");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut per_call: HashMap<String, u64> = HashMap::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.expect("message");
            got += 1;
            let body: serde_json::Value =
                serde_json::from_slice(&msg.payload).expect("handoff JSON");
            let sid = body["call_sid"].as_str().expect("call_sid").to_owned();
            *per_call.entry(sid).or_default() += 1;
        }
        if got == 0 {
            break;
        }
    }
    let duplicate_handoffs = per_call.values().map(|n| n.saturating_sub(1)).sum();
    Counts {
        sessions,
        dispatches,
        in_stream: per_call
            .into_keys()
            .filter(|sid| accepted.contains(sid))
            .collect(),
        duplicate_handoffs,
    }
}

struct Harness {
    pool: PgPool,
    bus: Bus,
    ingress: Service,
    dispatch: Service,
    /// A second dispatch-worker: the two share the consumer and the relay.
    dispatch_peer: Service,
    prefix: String,
    to: String,
    /// When each handoff message reached a plain subscriber, as a runtime
    /// would see it arrive.
    handoff_arrivals: Arc<Mutex<Vec<Instant>>>,
    /// What the claiming runtime won.
    claims: Arc<Mutex<Claims>>,
}

/// A subscriber to every handoff subject, recording arrival times; the
/// client reconnects and subscribes again by itself after NATS restarts.
async fn watch_handoffs(nats_url: &str, prefix: &str) -> Arc<Mutex<Vec<Instant>>> {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let client = connect_bus(nats_url).await;
    let mut subscription = client
        .subscribe(shared::nats::Subjects::new(prefix).runtime_handoff_all())
        .await
        .expect("subscribe");
    let seen = arrivals.clone();
    tokio::spawn(async move {
        let _client = client;
        while subscription.next().await.is_some() {
            seen.lock().expect("lock").push(Instant::now());
        }
    });
    arrivals
}

/// Successful claims per dispatch, and each claimed dispatch's CallSid.
#[derive(Default)]
struct Claims {
    won: HashMap<Uuid, u32>,
    call_sid: HashMap<Uuid, String>,
    /// While set, the runtime claims nothing and hands every handoff back
    /// (a runtime fleet that is down): dispatches stay pending.
    paused: bool,
}

/// A voice runtime as far as the faults go: its own durable consumer on the
/// handoff stream, claiming every handoff through the api (the real claim,
/// on the same database), acking once the claim answered, and binding its
/// consumer again after a pull error (NATS lost it with its store).
fn start_claimer(
    bus_url: String,
    prefix: String,
    api: TestApp,
    token: String,
) -> Arc<Mutex<Claims>> {
    let claims = Arc::new(Mutex::new(Claims::default()));
    let seen = claims.clone();
    tokio::spawn(async move {
        let js = jetstream::new(connect_bus(&bus_url).await);
        let stream_name = shared::nats::Subjects::new(&prefix).runtime_handoffs_stream();
        loop {
            let consumer = match js.get_stream(&stream_name).await {
                Ok(stream) => stream
                    .get_or_create_consumer(
                        "fault-runtime",
                        consumer::pull::Config {
                            durable_name: Some("fault-runtime".into()),
                            ack_policy: consumer::AckPolicy::Explicit,
                            ..Default::default()
                        },
                    )
                    .await
                    .ok(),
                Err(_) => None,
            };
            let messages = match consumer {
                Some(consumer) => consumer.messages().await.ok(),
                None => None,
            };
            if let Some(messages) = messages {
                messages
                    .take_while(|m| futures::future::ready(m.is_ok()))
                    .filter_map(|m| futures::future::ready(m.ok()))
                    .for_each_concurrent(32, |message| {
                        let (api, token, seen) = (&api, &token, &seen);
                        async move { claim(api, token, seen, message).await }
                    })
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    claims
}

async fn claim(api: &TestApp, token: &str, claims: &Mutex<Claims>, message: jetstream::Message) {
    if claims.lock().expect("lock").paused {
        let _ = message
            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(500))))
            .await;
        return;
    }
    let handoff: shared::calls::HandoffRequested =
        serde_json::from_slice(&message.payload).expect("handoff JSON");
    let answer = api
        .client
        .post(api.url("/internal/runtime/dispatches/claim"))
        .bearer_auth(token)
        .json(&serde_json::json!({"dispatch_id": handoff.dispatch_id}))
        .send()
        .await;
    let settled = match answer.map(|r| r.status().as_u16()) {
        Ok(200) => {
            let mut c = claims.lock().expect("lock");
            *c.won.entry(handoff.dispatch_id).or_default() += 1;
            c.call_sid.insert(handoff.dispatch_id, handoff.call_sid);
            true
        }
        // Claimed before (a repeated handoff) or expired: decided.
        Ok(409 | 410) => true,
        // The api could not answer (its database was down): again later.
        _ => false,
    };
    let ack = if settled {
        jetstream::AckKind::Ack
    } else {
        jetstream::AckKind::Nak(Some(Duration::from_secs(1)))
    };
    let _ = message.ack_with(ack).await;
}

/// The services on `db_url` (which `pool` also reaches) and `bus`.
async fn harness_on(pool: PgPool, db_url: String, bus: Bus) -> Harness {
    // One routed number with an agent whose published version is active.
    let to = "+15005550006".to_owned();
    let seeded = shared::testing::seed_routed_number(&pool, &to, 1)
        .await
        .expect("seed a routed number");

    let prefix = format!("f{}", Uuid::new_v4().simple());
    let common = vec![
        ("DATABASE_URL".to_owned(), db_url),
        ("DATABASE_MAX_CONNECTIONS".to_owned(), "10".to_owned()),
        ("NATS_URL".to_owned(), bus.url()),
        ("NATS_STREAM_REPLICAS".to_owned(), bus.replicas().to_owned()),
        ("NATS_SUBJECT_PREFIX".to_owned(), prefix.clone()),
        ("APP_ENV".to_owned(), "development".to_owned()),
        (
            "ENCRYPTION_KEY".to_owned(),
            shared::config::DEV_ENCRYPTION_KEY.to_owned(),
        ),
    ];
    let mut ingress_env = common.clone();
    let mut ingress = Service::new("webhook-ingress", vec![]);
    ingress_env.extend([
        ("TWILIO_VALIDATE_SIGNATURE".to_owned(), "true".to_owned()),
        ("TWILIO_AUTH_TOKEN".to_owned(), AUTH_TOKEN.to_owned()),
        (
            "TWILIO_WEBHOOK_BASE_URL".to_owned(),
            format!("http://127.0.0.1:{}", ingress.port),
        ),
    ]);
    ingress.env = ingress_env;
    let mut dispatch = Service::new("dispatch-worker", common.clone());
    let mut dispatch_peer = Service::new("dispatch-worker", common);
    ingress.start().await;
    dispatch.start().await;
    dispatch_peer.start().await;
    let handoff_arrivals = watch_handoffs(&bus.url(), &prefix).await;
    // The api (in-process: only its claim is used) and a runtime claiming.
    let api_nats = shared::nats::server_list(&bus.url())
        .first()
        .cloned()
        .expect("a NATS URL");
    let api_prefix = prefix.clone();
    let api = api::testing::spawn_app_with(pool.clone(), move |config| {
        config.nats.nats_url = api_nats;
        config.nats.nats_subject_prefix = api_prefix;
        config.encryption.encryption_key = Some(shared::config::DEV_ENCRYPTION_KEY.into());
    })
    .await;
    let token = api.token(seeded.tenant_id, shared::auth::Role::Runtime);
    let claims = start_claimer(bus.url(), prefix.clone(), api, token);
    Harness {
        pool,
        bus,
        ingress,
        dispatch,
        dispatch_peer,
        prefix,
        to,
        handoff_arrivals,
        claims,
    }
}

/// What a fault may do besides losing nothing.
#[derive(Clone, Copy, Default)]
struct Allowances {
    /// A handoff may reach the stream twice (the bus lost its store and the
    /// handoffs were published again); the claim decides.
    repeated_handoffs: bool,
    /// Webhooks are answered within this p99 throughout (the commit does
    /// not wait on NATS).
    answer_p99_under: Option<Duration>,
    /// The fault must show as 503s (the commit failed, so Twilio retries).
    refusals_expected: bool,
}

/// Runs the load while `fault` acts, then waits for the system to settle and
/// checks the promise.
async fn run_fault(name: &str, h: &mut Harness, fault: impl AsyncFnOnce(&mut Harness)) {
    run_fault_allowing(name, h, Allowances::default(), fault).await;
}

async fn run_fault_allowing(
    name: &str,
    h: &mut Harness,
    allowances: Allowances,
    fault: impl AsyncFnOnce(&mut Harness),
) {
    // Live progress: the whole suite takes a minute or more.
    report(format!("fault `{name}`: under load now..."));
    let result = Arc::new(Mutex::new(LoadResult::default()));
    let load = tokio::spawn(drive_load(h.ingress.port, h.to.clone(), result.clone()));
    fault(h).await;
    let fault_ended = Instant::now();
    load.await.expect("load");
    let r = std::mem::take(&mut *result.lock().expect("lock"));

    let accepted = r.accepted.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(90);
    // Accepted calls the runtime claimed, those claimed twice, and those
    // handed off (a message in the stream, or already claimed).
    let tally = |counts: &Counts, claims: &Claims| {
        let mut claimed = HashSet::new();
        let mut twice = 0_i64;
        for (dispatch, sid) in &claims.call_sid {
            if r.accepted.contains(sid) {
                claimed.insert(sid.clone());
                twice += i64::from(claims.won[dispatch] > 1);
            }
        }
        let handed_off = counts.in_stream.union(&claimed).count() as i64;
        (handed_off, claimed.len() as i64, twice)
    };
    let (counts, (handoffs, claimed_once, claimed_twice)) = loop {
        let counts = count(&h.pool, &h.bus.url(), &h.prefix, &r.accepted).await;
        let t = tally(&counts, &h.claims.lock().expect("lock"));
        let settled = counts.dispatches == accepted && t.0 == accepted && t.1 == accepted;
        if settled || Instant::now() > deadline {
            break (counts, t);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let lost = (accepted - counts.dispatches) + (accepted - handoffs);
    let drained = fault_ended.elapsed();
    let first_handoff = h
        .handoff_arrivals
        .lock()
        .expect("lock")
        .iter()
        .filter(|at| **at >= fault_ended)
        .min()
        .map(|at| at.duration_since(fault_ended));
    report(format!(
        "fault `{name}`: sent {}, accepted {}, 503s {}, other {:?}, answer p50/p99/max {:?}/{:?}/{:?}, \
         sessions {}, dispatches {}, handoff messages {}, handed off {}, repeated handoffs {}, claimed {}, \
         claimed twice {}, lost {}, first handoff {:?} after the fault ended, settled after {:?}",
        r.sent,
        accepted,
        r.unavailable,
        r.other,
        r.latency(0.5),
        r.latency(0.99),
        r.latency(1.0),
        counts.sessions,
        counts.dispatches,
        counts.in_stream.len() as u64 + counts.duplicate_handoffs,
        handoffs,
        counts.duplicate_handoffs,
        claimed_once,
        claimed_twice,
        lost,
        first_handoff,
        drained,
    ));
    assert!(accepted > 0, "{name}: nothing was accepted");
    assert_eq!(counts.sessions, accepted, "{name}: sessions");
    assert_eq!(counts.dispatches, accepted, "{name}: dispatches");
    assert_eq!(handoffs, accepted, "{name}: handed off");
    assert_eq!(lost, 0, "{name}: lost");
    assert_eq!(claimed_once, accepted, "{name}: claims");
    assert_eq!(claimed_twice, 0, "{name}: a dispatch claimed twice");
    if !allowances.repeated_handoffs {
        assert_eq!(counts.duplicate_handoffs, 0, "{name}: duplicate handoffs");
    }
    if allowances.refusals_expected {
        assert!(
            r.unavailable > 0,
            "{name}: the fault refused nothing: did it hit?"
        );
    }
    if let Some(bound) = allowances.answer_p99_under {
        assert!(
            r.latency(0.99) < bound,
            "{name}: answers slowed down: p99 {:?}",
            r.latency(0.99)
        );
    }
    let duplicate_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM call_events GROUP BY call_id, idempotency_key HAVING count(*) > 1) d",
    )
    .fetch_one(&h.pool)
    .await
    .expect("duplicates");
    assert_eq!(duplicate_events, 0, "{name}: duplicate events");
}

/// Prints past libtest's output capture (which only takes `print!`), so
/// the counts show in every run, CI included.
fn report(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn metrics_text(service: &Service) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", service.ops_port);
    reqwest::get(&url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Dispatches a dispatch-worker instance created since it started.
async fn dispatches_created(service: &Service) -> f64 {
    let text = metrics_text(service).await;
    text.lines()
        .filter(|l| l.starts_with("dispatch_dispatches_created_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn terminate_service_connections(pool: &PgPool) {
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(pool)
    .await
    .expect("terminate");
    report(format!("terminated {killed} connections"));
}

#[tokio::test]
async fn nothing_accepted_is_lost_under_faults() {
    let _alone = ONE_SUITE_AT_A_TIME.lock().await;
    shared::install_crypto_providers();
    let pg = PrivatePostgres::start().await;
    let pool = pg.migrated_pool().await;
    let bus = Bus::Single(PrivateNats::start().await);
    let mut h = harness_on(pool, pg.url(), bus).await;
    let pause = || tokio::time::sleep(Duration::from_secs(5));

    run_fault("dispatch-worker SIGKILL and restart", &mut h, async |h| {
        pause().await;
        h.dispatch.kill9();
        tokio::time::sleep(Duration::from_secs(3)).await;
        h.dispatch.start().await;
    })
    .await;

    run_fault("NATS server restart", &mut h, async |h| {
        pause().await;
        h.bus.single().restart().await;
    })
    .await;

    // Postgres is the record: what NATS acknowledged and then lost comes
    // back from the outbox (call events) and from the pending dispatches
    // (handoffs), into streams and consumers made anew.
    run_fault_allowing(
        "NATS loses its store (killed, store deleted, started empty)",
        &mut h,
        Allowances {
            repeated_handoffs: true,
            ..Allowances::default()
        },
        async |h| {
            pause().await;
            h.bus.single().lose_store().await;
        },
    )
    .await;

    // A power cut: NATS and both dispatch-workers go down together, and
    // NATS comes back without its store while the runtimes are still away,
    // so the handoffs of pending dispatches are lost with no worker having
    // seen it happen. The workers notice on start-up (the streams' creation
    // times are kept in Postgres) and publish those handoffs again.
    run_fault_allowing(
        "NATS and both dispatch-workers down together, NATS's store lost",
        &mut h,
        Allowances {
            repeated_handoffs: true,
            ..Allowances::default()
        },
        async |h| {
            h.claims.lock().expect("lock").paused = true;
            pause().await;
            h.dispatch.kill9();
            h.dispatch_peer.kill9();
            h.bus.single().lose_store().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            h.dispatch.start().await;
            h.dispatch_peer.start().await;
            h.claims.lock().expect("lock").paused = false;
        },
    )
    .await;

    // The commit never waits on NATS: a bus that stops answering does not
    // slow Twilio's answers, and the backlog drains once it answers again.
    run_fault_allowing(
        "NATS frozen for 30 s (SIGSTOP, then SIGCONT)",
        &mut h,
        Allowances {
            answer_p99_under: Some(Duration::from_secs(1)),
            ..Allowances::default()
        },
        async |h| {
            pause().await;
            h.bus.single().freeze();
            tokio::time::sleep(Duration::from_secs(10)).await;
            // The ingress stays in rotation: its work does not need NATS.
            let (status, body) = readiness(&h.ingress).await;
            assert_eq!(status, 200, "ingress readiness with NATS frozen: {body}");
            tokio::time::sleep(Duration::from_secs(20)).await;
            h.bus.single().thaw();
        },
    )
    .await;

    // Scale-out: both dispatch-workers took part (and, by the checks above,
    // nothing was done twice).
    let (first, second) = (
        dispatches_created(&h.dispatch).await,
        dispatches_created(&h.dispatch_peer).await,
    );
    report(format!(
        "dispatches created per instance since its start: {first} and {second}"
    ));
    assert!(
        first > 0.0 && second > 0.0,
        "one dispatch-worker did all the work: {first} / {second}"
    );
    // The outbox and consumer-lag gauges ops alert on are exported.
    let text = metrics_text(&h.dispatch).await;
    for name in [
        "outbox_oldest_unpublished_age_seconds",
        "nats_consumer_pending_messages",
        "nats_consumer_ack_pending_messages",
        "nats_consumer_redelivered_messages",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }

    run_fault("database connections terminated twice", &mut h, async |h| {
        pause().await;
        terminate_service_connections(&h.pool).await;
        pause().await;
        terminate_service_connections(&h.pool).await;
    })
    .await;

    run_fault(
        "SIGTERM to ingress and dispatch-worker under load",
        &mut h,
        async |h| {
            pause().await;
            h.ingress.terminate().await;
            h.ingress.start().await;
            pause().await;
            h.dispatch.terminate().await;
            h.dispatch.start().await;
        },
    )
    .await;
}

/// Postgres crashes (`pg_ctl stop -m immediate`: no checkpoint, every pooled
/// connection broken) and comes back 5 s later through WAL recovery.
/// Webhooks meanwhile are refused with 503, so Twilio retries them; none is
/// answered 200 and lost.
#[tokio::test]
async fn nothing_accepted_is_lost_when_postgres_crashes() {
    let _alone = ONE_SUITE_AT_A_TIME.lock().await;
    shared::install_crypto_providers();
    let pg = PrivatePostgres::start().await;
    let pool = pg.migrated_pool().await;
    let bus = Bus::Single(PrivateNats::start().await);
    let mut h = harness_on(pool, pg.url(), bus).await;
    run_fault_allowing(
        "Postgres crashed (stop -m immediate), started again 5 s later",
        &mut h,
        Allowances {
            refusals_expected: true,
            ..Allowances::default()
        },
        async |_| {
            tokio::time::sleep(Duration::from_secs(5)).await;
            pg.crash();
            tokio::time::sleep(Duration::from_secs(5)).await;
            pg.up();
        },
    )
    .await;
}

/// A node of a three-node JetStream cluster (the streams replicated three
/// times) is lost: the one leading the calls stream is killed with SIGKILL
/// and started again 10 s later, as a rolling upgrade or a crashed host
/// would. The services, given every node's URL, carry on through the others.
#[tokio::test]
async fn nothing_accepted_is_lost_when_a_cluster_node_is_lost() {
    let _alone = ONE_SUITE_AT_A_TIME.lock().await;
    shared::install_crypto_providers();
    let pg = PrivatePostgres::start().await;
    let pool = pg.migrated_pool().await;
    let bus = Bus::Cluster(NatsCluster::start().await);
    let mut h = harness_on(pool, pg.url(), bus).await;
    let calls_stream = shared::nats::Subjects::new(&h.prefix).calls_stream();
    run_fault(
        "the node leading the calls stream killed, back 10 s later",
        &mut h,
        async |h| {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let cluster = h.bus.cluster();
            let leader = cluster.leader_of(&calls_stream).await;
            report(format!(
                "killing {}, the calls stream's leader",
                cluster.nodes[leader].name
            ));
            cluster.kill(leader);
            tokio::time::sleep(Duration::from_secs(10)).await;
            cluster.spawn(leader);
        },
    )
    .await;
}

// The receiver of the webhook tests; this suite uses part of it.
#[allow(dead_code)]
#[path = "it/webhooks/receiver.rs"]
mod receiver;

/// Tenant event webhooks under faults: 2,000 events recorded while one of
/// two automation-workers is SIGKILLed (and started again) and NATS
/// restarts. Every event must reach the receiver at least once with a
/// valid signature and end `succeeded`; copies (the same `webhook-id`
/// twice: a worker killed after the receiver answered, before the record)
/// are counted and printed.
#[tokio::test]
async fn every_webhook_event_is_delivered_through_a_killed_worker_and_a_nats_restart() {
    let _alone = ONE_SUITE_AT_A_TIME.lock().await;
    shared::install_crypto_providers();
    const EVENTS: usize = 2000;
    let pg = PrivatePostgres::start().await;
    let pool = pg.migrated_pool().await;
    let mut nats = PrivateNats::start().await;
    let receiver = receiver::Receiver::start().await;
    // Each answer takes 10 ms, so deliveries are in flight when the faults hit.
    receiver.script(
        "/events",
        (0..2 * EVENTS).map(|_| receiver::Answer::Delay(Duration::from_millis(10))),
    );

    let tenant = Uuid::now_v7();
    let endpoint = Uuid::now_v7();
    let secret = shared::webhooks::generate_secret();
    let key = shared::config::decode_key(shared::config::DEV_ENCRYPTION_KEY).expect("key");
    let sealed = shared::crypto::SecretBox::new(&key)
        .seal(
            secret.as_bytes(),
            &shared::webhooks::secret_aad(tenant, endpoint),
        )
        .expect("seal");
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'Hooks')")
        .bind(tenant)
        .execute(&pool)
        .await
        .expect("tenant");
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, secret_ciphertext, secret_nonce, secret_key_id)
         VALUES ($1, $2, $3, '{call.ended}', $4, $5, $6)",
    )
    .bind(endpoint)
    .bind(tenant)
    .bind(receiver.url("/events"))
    .bind(&sealed.ciphertext)
    .bind(&sealed.nonce)
    .bind(&sealed.key_id)
    .execute(&pool)
    .await
    .expect("endpoint");

    let env: Vec<(String, String)> = [
        ("DATABASE_URL", pg.url()),
        ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
        ("NATS_URL", nats.url()),
        (
            "NATS_SUBJECT_PREFIX",
            format!("wf{}", Uuid::new_v4().simple()),
        ),
        ("APP_ENV", "development".to_owned()),
        (
            "ENCRYPTION_KEY",
            shared::config::DEV_ENCRYPTION_KEY.to_owned(),
        ),
        ("AUTOMATION_ALLOW_PRIVATE_NETWORKS", "true".to_owned()),
        ("WEBHOOK_TIMEOUT", "2s".to_owned()),
        (
            "WEBHOOK_RETRY_SCHEDULE",
            "0s,200ms,500ms,1s,1s,1s,1s,1s,1s,1s".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut killed = Service::new("automation-worker", env.clone());
    let mut peer = Service::new("automation-worker", env);
    killed.start().await;
    peer.start().await;

    // The events, recorded as the triggers record them, over about 2 s.
    let recorder = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for batch in 0..20 {
                sqlx::query(
                    "SELECT record_webhook_event($1, 'call.ended', jsonb_build_object('n', g))
                     FROM generate_series($2::int, $2::int + 99) g",
                )
                .bind(tenant)
                .bind(batch * 100)
                .execute(&pool)
                .await
                .expect("record");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The faults, while deliveries are in flight.
    let started = Instant::now();
    while receiver.received("/events").len() < 300 {
        assert!(started.elapsed() < Duration::from_secs(30), "no deliveries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed.kill9();
    nats.restart().await;
    recorder.await.expect("recorder");
    killed.start().await;

    // Settled: every delivery succeeded (a stranded one is due again once
    // its lease runs out).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (succeeded, other): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status <> 'succeeded')
             FROM webhook_deliveries",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        if succeeded == EVENTS as i64 && other == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{succeeded} of {EVENTS} deliveries succeeded, {other} not yet"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let received = receiver.received("/events");
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for request in &received {
        assert!(
            request.verifies_with(&secret),
            "a request that does not verify"
        );
        *per_message.entry(request.webhook_id()).or_default() += 1;
    }
    let messages: HashSet<String> =
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM webhook_messages")
            .fetch_all(&pool)
            .await
            .expect("messages")
            .into_iter()
            .map(shared::webhooks::message_id)
            .collect();
    assert_eq!(messages.len(), EVENTS);
    let delivered: HashSet<String> = per_message.keys().cloned().collect();
    assert_eq!(delivered, messages, "every event reached the receiver");
    let copies = received.len() - per_message.len();
    report(format!(
        "webhook fault (one of two workers SIGKILLed, NATS restarted): {EVENTS} events, \
         {} requests, {} delivered, {copies} copies of {} messages (same webhook-id), settled after {:?}",
        received.len(),
        per_message.len(),
        per_message.values().filter(|n| **n > 1).count(),
        started.elapsed()
    ));
}
