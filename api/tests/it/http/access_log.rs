//! The api binary's access log: one line per request, whatever its status,
//! and none for health probes.

use std::time::Duration;

use serde_json::Value;
use shared::testing::process::{RunningBinary, wait_for_status};
use sqlx::PgPool;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_request_leaves_one_access_line_health_probes_excepted(pool: PgPool) {
    let listen = format!("127.0.0.1:{}", shared::testing::free_port());
    let database_url = shared::testing::database_url(&pool);
    let prefix = shared::testing::unique_prefix();
    let api = RunningBinary::start(
        env!("CARGO_BIN_EXE_api"),
        &[
            ("APP_ENV", "development"),
            ("DATABASE_URL", &database_url),
            ("NATS_URL", "nats://127.0.0.1:4222"),
            ("NATS_SUBJECT_PREFIX", &prefix),
            ("LISTEN_ADDR", &listen),
        ],
    );
    let base = format!("http://{listen}");
    assert!(
        wait_for_status(
            &format!("{base}/health/ready"),
            200,
            Duration::from_secs(60)
        )
        .await,
        "{}",
        api.output()
    );
    let client = reqwest::Client::new();
    let send = |request: reqwest::RequestBuilder, id: &'static str| async move {
        request
            .header("x-request-id", id)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    };
    assert_eq!(
        send(client.get(format!("{base}/openapi.json")), "req-ok").await,
        200
    );
    assert_eq!(
        send(client.get(format!("{base}/internal/tenants")), "req-401").await,
        401
    );
    let bad_json = client
        .post(format!("{base}/auth/login"))
        .header("content-type", "application/json")
        .body("{");
    assert_eq!(send(bad_json, "req-400").await, 400);
    assert_eq!(
        send(client.get(format!("{base}/no/such/route")), "req-404").await,
        404
    );
    for _ in 0..3 {
        assert_eq!(
            send(client.get(format!("{base}/health")), "probe").await,
            200
        );
        assert_eq!(
            send(client.get(format!("{base}/metrics")), "probe").await,
            200
        );
    }

    let access_lines = |output: &str| -> Vec<Value> {
        RunningBinary::log_lines(output)
            .into_iter()
            .filter(|line| line["target"] == "access")
            .collect()
    };
    let written = shared::testing::eventually(Duration::from_secs(10), || {
        let n = access_lines(&api.output()).len();
        async move { n >= 4 }
    })
    .await;
    let output = api.stop();
    assert!(written, "{output}");
    let lines = access_lines(&output);
    assert_eq!(
        lines.len(),
        4,
        "health probes and scrapes are not logged: {lines:#?}"
    );
    for (id, method, route, status) in [
        ("req-ok", "GET", "/openapi.json", 200),
        ("req-401", "GET", "/internal/tenants", 401),
        ("req-400", "POST", "/auth/login", 400),
        ("req-404", "GET", "unmatched", 404),
    ] {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"));
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["route"], route, "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert!(
            line["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
    }
}
