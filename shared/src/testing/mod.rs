//! Fixtures the binaries' integration tests share (feature `test-support`,
//! enabled only in their dev-dependencies).

pub mod configuration_doc;
pub mod nats_server;
pub mod plans;
pub mod process;

/// An encryption key for tests that is not the development key, so that a
/// test may run its binary with `APP_ENV=production` (32 bytes, base64).
pub const ENCRYPTION_KEY: &str = "dGVzdC1vbmx5LWtleS1ub3QtdGhlLWRldi1rZXkhISE=";

use sqlx::PgPool;
use uuid::Uuid;

/// What [`seed_routed_number`] created.
#[derive(Debug, Clone)]
pub struct RoutedNumber {
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub version_id: Uuid,
    pub phone_number_id: Uuid,
    pub e164: String,
}

/// A tenant, an agent whose active version is the published `version`, and
/// an active phone number `e164` routed to it, in one transaction.
pub async fn seed_routed_number(
    pool: &PgPool,
    e164: &str,
    version: i32,
) -> Result<RoutedNumber, sqlx::Error> {
    let seeded = RoutedNumber {
        tenant_id: Uuid::now_v7(),
        agent_id: Uuid::now_v7(),
        version_id: Uuid::now_v7(),
        phone_number_id: Uuid::now_v7(),
        e164: e164.to_owned(),
    };
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'acme')")
        .bind(seeded.tenant_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO agents (id, tenant_id, name, active_version_id) VALUES ($1, $2, 'a', $3)",
    )
    .bind(seeded.agent_id)
    .bind(seeded.tenant_id)
    .bind(seeded.version_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO agent_versions (id, tenant_id, agent_id, version, config, status, published_at)
         VALUES ($1, $2, $3, $4, '{}', 'published', now())",
    )
    .bind(seeded.version_id)
    .bind(seeded.tenant_id)
    .bind(seeded.agent_id)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO phone_numbers (id, tenant_id, e164, twilio_sid, agent_id)
         VALUES ($1, $2, $3, 'PN1', $4)",
    )
    .bind(seeded.phone_number_id)
    .bind(seeded.tenant_id)
    .bind(e164)
    .bind(seeded.agent_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(seeded)
}

/// A unique NATS subject prefix, so tests sharing one NATS server stay apart.
pub fn unique_prefix() -> String {
    format!("t{}", Uuid::new_v4().simple())
}

/// Polls `check` until it is true (then true) or `timeout` passes (then
/// false): waiting for a result with a deadline, never a fixed sleep.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Messages currently in `stream`, or 0 if it does not exist yet.
pub async fn stream_messages(nats: &async_nats::Client, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(nats.clone());
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The sequence number of the last message `stream` stored, or 0: unlike
/// the message count it never goes down when acknowledged messages are
/// removed, so it shows whether anything was stored since.
pub async fn stream_last_sequence(nats: &async_nats::Client, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(nats.clone());
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Deletes the test's call and runtime streams (its prefix's), so a run
/// leaves nothing behind on the shared NATS server.
pub async fn delete_streams(nats: &async_nats::Client, subjects: &crate::nats::Subjects) {
    let js = async_nats::jetstream::new(nats.clone());
    for name in [
        subjects.calls_stream(),
        subjects.runtime_handoffs_stream(),
        subjects.runtime_events_stream(),
    ] {
        let _ = js.delete_stream(&name).await;
    }
}

/// The URL of the test's own database (a `#[sqlx::test]` pool's), for child
/// processes: `DATABASE_URL` names the server, the pool the database.
///
/// # Panics
/// When `DATABASE_URL` is unset or not a URL: a test set-up error.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    let db = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    url.set_path(&format!("/{db}"));
    url.to_string()
}

/// A TCP port free on 127.0.0.1 right now, for a child process to listen on.
///
/// Taken below the kernel's ephemeral range when there is room, at random:
/// a port from that range (what binding port 0 gives) can be taken by any
/// outgoing connection, a test's own included, before the child binds it.
///
/// # Panics
/// When no port can be bound: a test set-up error.
pub fn free_port() -> u16 {
    const LOWEST: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOWEST + 1_000 {
        let span = ephemeral_low - LOWEST;
        let start = (Uuid::new_v4().as_u128() % u128::from(span)) as u16;
        for offset in 0..span.min(2_000) {
            let port = LOWEST + (start + offset) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Runs a binary of this workspace (`CARGO_BIN_EXE_<name>`) with nothing but
/// `env` on top of unreachable Postgres and NATS and a cleared environment
/// (so `APP_ENV` is unset unless given), until it exits (at most 30 s).
/// Returns whether it exited successfully, and what it printed: for start-up
/// checks, which must stop a binary before it touches anything.
///
/// # Panics
/// When the binary cannot be started or does not exit in time.
pub fn run_until_exit(binary: &str, env: &[(&str, &str)]) -> (bool, String) {
    use std::time::{Duration, Instant};

    let mut all = vec![
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/unreachable",
        ),
        ("NATS_URL", "nats://127.0.0.1:1"),
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("LOG_FORMAT", "pretty"),
        ("RUST_LOG", "warn"),
    ];
    all.extend_from_slice(env);
    let mut running = process::RunningBinary::start(binary, &all);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = running.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "{binary} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), running.stop())
}
