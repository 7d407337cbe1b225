//! `GET /client/kpis` against a small data set whose figures are worked out
//! by hand below (not by re-running the endpoint's SQL).

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::client::{Fixture, NewCall, get_json, viewer};
use api::testing::{TestApp, spawn_app};
use shared::kpi_rollups::compact;

const PERIOD: &str = "from=2026-11-01T00:00:00Z&to=2026-11-04T00:00:00Z";

fn close(actual: &Value, expected: f64, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {actual}"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: {actual} != {expected}"
    );
}

fn series(body: &Value) -> Vec<(String, i64, f64)> {
    body["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|p| {
            (
                p["date"].as_str().expect("date").to_owned(),
                p["calls"].as_i64().expect("calls"),
                p["minutes"].as_f64().expect("minutes"),
            )
        })
        .collect()
}

/// Tenant A's calls (agent X unless said otherwise), numbered as in the
/// expectations:
///  1 11-01 10:00Z completed inbound, answered +10 s, ended +70 s -> 60 s
///  2 11-01 23:30Z completed inbound, answered +5 s, ended +130 s, CallDuration 120 -> 120 s
///  3 11-02 12:00Z busy inbound, CallDuration 0, never answered -> no duration
///  4 11-02 13:00Z no-answer inbound
///  5 11-02 14:00Z completed outbound-api, answered +5, ended +35 -> 30 s
///  6 11-03 09:00Z in-progress inbound, answered +3, not ended -> no duration yet
///  7 11-03 10:00Z failed inbound
///  8 11-03 11:00Z canceled inbound
///  9 11-03 12:00Z completed inbound (agent Y), answered +2, CallDuration 300 -> 300 s
/// 10 10-31 23:59:59Z completed (before the period)
/// 11 11-04 00:00:00Z completed (the end is exclusive)
/// Tool executions: on 1 succeeded 100 ms and 200 ms, on 2 succeeded 300 ms,
/// on 9 failed 400 ms, on 6 running (no latency), and one on 11 at
/// 11-04 01:00Z (outside).
/// Tenant B has calls and executions at the same times with other values.
async fn load(pool: &PgPool, a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    let fx = Fixture { pool, tenant_id: a };
    let x = fx.agent("X").await;
    let y = fx.agent("Y").await;
    let tool = fx.tool("lookup").await;
    let call = |started_at, status, direction, agent, answered, ended, duration| NewCall {
        started_at,
        status,
        direction,
        agent_id: Some(agent),
        answered_after: answered,
        ended_after: ended,
        duration_seconds: duration,
        ..Default::default()
    };
    let c1 = fx
        .call(call(
            "2026-11-01T10:00:00Z",
            "completed",
            "inbound",
            x,
            Some(10.0),
            Some(70.0),
            None,
        ))
        .await;
    let c2 = fx
        .call(call(
            "2026-11-01T23:30:00Z",
            "completed",
            "inbound",
            x,
            Some(5.0),
            Some(130.0),
            Some(120),
        ))
        .await;
    fx.call(call(
        "2026-11-02T12:00:00Z",
        "busy",
        "inbound",
        x,
        None,
        Some(20.0),
        Some(0),
    ))
    .await;
    fx.call(call(
        "2026-11-02T13:00:00Z",
        "no-answer",
        "inbound",
        x,
        None,
        Some(30.0),
        None,
    ))
    .await;
    fx.call(call(
        "2026-11-02T14:00:00Z",
        "completed",
        "outbound-api",
        x,
        Some(5.0),
        Some(35.0),
        None,
    ))
    .await;
    let c6 = fx
        .call(call(
            "2026-11-03T09:00:00Z",
            "in-progress",
            "inbound",
            x,
            Some(3.0),
            None,
            None,
        ))
        .await;
    fx.call(call(
        "2026-11-03T10:00:00Z",
        "failed",
        "inbound",
        x,
        None,
        Some(1.0),
        None,
    ))
    .await;
    fx.call(call(
        "2026-11-03T11:00:00Z",
        "canceled",
        "inbound",
        x,
        None,
        Some(4.0),
        None,
    ))
    .await;
    let c9 = fx
        .call(call(
            "2026-11-03T12:00:00Z",
            "completed",
            "inbound",
            y,
            Some(2.0),
            Some(302.0),
            Some(300),
        ))
        .await;
    fx.call(call(
        "2026-10-31T23:59:59Z",
        "completed",
        "inbound",
        x,
        Some(1.0),
        Some(1001.0),
        Some(1000),
    ))
    .await;
    let c11 = fx
        .call(call(
            "2026-11-04T00:00:00Z",
            "completed",
            "inbound",
            x,
            Some(1.0),
            Some(61.0),
            None,
        ))
        .await;
    fx.tool_execution(c1, tool, "2026-11-01T10:00:20Z", "succeeded", Some(100))
        .await;
    fx.tool_execution(c1, tool, "2026-11-01T10:00:40Z", "succeeded", Some(200))
        .await;
    fx.tool_execution(c2, tool, "2026-11-01T23:31:00Z", "succeeded", Some(300))
        .await;
    fx.tool_execution(c9, tool, "2026-11-03T12:01:00Z", "failed", Some(400))
        .await;
    fx.tool_execution(c6, tool, "2026-11-03T09:00:30Z", "running", None)
        .await;
    fx.tool_execution(c11, tool, "2026-11-04T01:00:00Z", "succeeded", Some(5))
        .await;

    // Tenant B: overlapping times, values that would change every figure.
    let fb = Fixture { pool, tenant_id: b };
    let tool_b = fb.tool("lookup").await;
    for started_at in [
        "2026-11-01T10:00:00Z",
        "2026-11-02T12:00:00Z",
        "2026-11-03T12:00:00Z",
    ] {
        let c = fb
            .call(NewCall {
                started_at,
                direction: "inbound",
                answered_after: Some(1.0),
                duration_seconds: Some(9999),
                ..Default::default()
            })
            .await;
        fb.tool_execution(c, tool_b, started_at, "failed", Some(99_999))
            .await;
    }
    (x, y)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn kpis_match_the_hand_computed_figures(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = app.create_tenant("A").await;
    let b = app.create_tenant("B").await;
    let (_x, y) = load(&pool, a, b).await;
    let token = viewer(&app, a);

    // From the rows alone, then from the rollups once they are computed.
    assert_hand_computed(&app, &token, y).await;
    let done = compact(&pool).await.expect("compaction");
    assert!(done.tenants >= 2 && done.hours > 0, "{done:?}");
    let rolled: i64 = sqlx::query_scalar("SELECT count(*) FROM kpi_counts")
        .fetch_one(&pool)
        .await
        .expect("count quarters");
    assert!(rolled > 0, "the rollups were computed");
    assert_hand_computed(&app, &token, y).await;
}

async fn assert_hand_computed(app: &TestApp, token: &str, y: Uuid) {
    let (status, body) = get_json(app, &format!("/client/kpis?{PERIOD}"), token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tz"], "UTC");
    let calls = &body["calls"];
    // Calls 1 to 9.
    assert_eq!(calls["total"], 9);
    assert_eq!(
        calls["by_status"],
        json!({"queued": 0, "ringing": 0, "in-progress": 1, "completed": 4,
               "busy": 1, "failed": 1, "no-answer": 1, "canceled": 1, "rejected": 0})
    );
    // Inbound: all but 5 (8); ever in progress among them: 1, 2, 6, 9.
    assert_eq!(calls["inbound"], 8);
    assert_eq!(calls["answered_inbound"], 4);
    close(&calls["answer_rate"], 0.5, "answer_rate");

    // Durations of 1, 2, 5, 9: 60, 120, 30, 300 -> sorted 30, 60, 120, 300.
    let d = &body["duration"];
    assert_eq!(d["calls_with_duration"], 4);
    close(&d["average_seconds"], 510.0 / 4.0, "average");
    // percentile_cont: p50 at rank 1.5 -> 60 + 0.5 * (120 - 60) = 90;
    // p95 at rank 2.85 -> 120 + 0.85 * (300 - 120) = 273.
    close(&d["p50_seconds"], 90.0, "p50");
    close(&d["p95_seconds"], 273.0, "p95");
    close(&d["total_seconds"], 510.0, "total seconds");
    close(&d["total_minutes"], 8.5, "total minutes");

    // Executions in the period: 5; finished 4, succeeded 3; latencies
    // 100, 200, 300, 400 -> p95 at rank 2.85 -> 300 + 0.85 * 100 = 385.
    let t = &body["tools"];
    assert_eq!(t["executions_total"], 5);
    assert_eq!(t["succeeded"], 3);
    assert_eq!(t["failed"], 1);
    close(&t["success_rate"], 0.75, "success rate");
    close(&t["p95_latency_ms"], 385.0, "p95 latency");

    // UTC days: 11-01 has 1 and 2 (180 s), 11-02 has 3, 4, 5 (30 s),
    // 11-03 has 6 to 9 (300 s).
    assert_eq!(
        series(&body),
        vec![
            ("2026-11-01".into(), 2, 3.0),
            ("2026-11-02".into(), 3, 0.5),
            ("2026-11-03".into(), 4, 5.0),
        ]
    );

    // Paris is UTC+1 in November: call 2 (23:30Z) falls on 11-02, and the
    // period's last hour on 11-04.
    let (status, body) = get_json(
        app,
        &format!("/client/kpis?{PERIOD}&tz=Europe%2FParis"),
        token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tz"], "Europe/Paris");
    assert_eq!(
        series(&body),
        vec![
            ("2026-11-01".into(), 1, 1.0),
            ("2026-11-02".into(), 4, 2.5),
            ("2026-11-03".into(), 4, 5.0),
            ("2026-11-04".into(), 0, 0.0),
        ]
    );
    assert_eq!(body["calls"]["total"], 9, "tz changes only the series");

    // Agent Y: call 9 alone, and its failed execution.
    let (status, body) = get_json(app, &format!("/client/kpis?{PERIOD}&agent_id={y}"), token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["calls"]["total"], 1);
    assert_eq!(body["calls"]["by_status"]["completed"], 1);
    close(&body["calls"]["answer_rate"], 1.0, "agent answer rate");
    close(&body["duration"]["p50_seconds"], 300.0, "agent p50");
    close(&body["duration"]["p95_seconds"], 300.0, "agent p95");
    close(&body["duration"]["total_minutes"], 5.0, "agent minutes");
    assert_eq!(body["tools"]["executions_total"], 1);
    close(&body["tools"]["success_rate"], 0.0, "agent success rate");
    close(&body["tools"]["p95_latency_ms"], 400.0, "agent p95 latency");
    assert_eq!(
        series(&body),
        vec![
            ("2026-11-01".into(), 0, 0.0),
            ("2026-11-02".into(), 0, 0.0),
            ("2026-11-03".into(), 1, 5.0),
        ]
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_empty_period_has_zeros_and_no_rates(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = app.create_tenant("A").await;
    let token = viewer(&app, a);
    let (status, body) = get_json(
        &app,
        "/client/kpis?from=2026-11-01T00:00:00Z&to=2026-11-02T12:00:00Z",
        &token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["calls"]["total"], 0);
    assert!(body["calls"]["answer_rate"].is_null());
    assert!(body["duration"]["average_seconds"].is_null());
    assert!(body["duration"]["p95_seconds"].is_null());
    assert_eq!(body["duration"]["total_minutes"], 0.0);
    assert!(body["tools"]["success_rate"].is_null());
    assert_eq!(
        series(&body),
        vec![("2026-11-01".into(), 0, 0.0), ("2026-11-02".into(), 0, 0.0)]
    );

    // The default period: the last 7 days, ending now.
    let (status, body) = get_json(&app, "/client/kpis", &token).await;
    assert_eq!(status, 200, "{body}");
    let from = chrono::DateTime::parse_from_rfc3339(body["from"].as_str().expect("from"))
        .expect("from time");
    let to =
        chrono::DateTime::parse_from_rfc3339(body["to"].as_str().expect("to")).expect("to time");
    assert_eq!(to - from, chrono::Duration::days(7));
    assert!(matches!(series(&body).len(), 7 | 8));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn calls_refused_for_capacity_count_apart_from_busy_and_failed(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = app.create_tenant("A").await;
    for (n, status, reason) in [
        (1, "rejected", Some("capacity")),
        (2, "rejected", Some("capacity")),
        (3, "busy", None),
        (4, "failed", None),
    ] {
        sqlx::query(
            "INSERT INTO call_sessions (id, tenant_id, call_sid, status, rejected_reason, started_at)
             VALUES ($1, $2, $3, $4, $5, '2026-11-02T10:00:00Z')",
        )
        .bind(Uuid::now_v7())
        .bind(a)
        .bind(format!("CAkpi{n}"))
        .bind(status)
        .bind(reason)
        .execute(&pool)
        .await
        .expect("insert call");
    }
    let (status, body) = get_json(&app, &format!("/client/kpis?{PERIOD}"), &viewer(&app, a)).await;
    assert_eq!(status, 200, "{body}");
    let by_status = &body["calls"]["by_status"];
    assert_eq!(
        (
            &by_status["rejected"],
            &by_status["busy"],
            &by_status["failed"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{body}"
    );
    assert_eq!(body["calls"]["total"], 4);
    // The calls list filters on it too.
    let (status, page) = get_json(&app, "/client/calls?status=rejected", &viewer(&app, a)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
}

/// The figures after importing a call straight into the table (as a tenant
/// moving from the old service would) on 11-02 and a late `completed`
/// callback for call 6 (11-03, CallDuration 45), worked out by hand:
/// 10 calls; no-answer 2, in-progress 0, completed 5; inbound 9, answered 4;
/// durations 30, 45, 60, 120, 300: average 111, p50 60 (rank 2), p95 at
/// rank 3.8 -> 120 + 0.8 * 180 = 264, total 555 s.
async fn assert_after_import_and_callback(app: &TestApp, token: &str) {
    let (status, body) = get_json(app, &format!("/client/kpis?{PERIOD}"), token).await;
    assert_eq!(status, 200, "{body}");
    let calls = &body["calls"];
    assert_eq!(calls["total"], 10, "{body}");
    assert_eq!(calls["by_status"]["no-answer"], 2);
    assert_eq!(calls["by_status"]["in-progress"], 0);
    assert_eq!(calls["by_status"]["completed"], 5);
    assert_eq!(calls["inbound"], 9);
    close(&calls["answer_rate"], 4.0 / 9.0, "answer rate");
    let d = &body["duration"];
    assert_eq!(d["calls_with_duration"], 5);
    close(&d["average_seconds"], 111.0, "average");
    close(&d["p50_seconds"], 60.0, "p50");
    close(&d["p95_seconds"], 264.0, "p95");
    close(&d["total_seconds"], 555.0, "total");
    assert_eq!(
        series(&body),
        vec![
            ("2026-11-01".into(), 2, 3.0),
            ("2026-11-02".into(), 4, 0.5),
            ("2026-11-03".into(), 4, 5.75),
        ]
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn rollups_stay_exact_after_an_import_a_late_callback_and_a_deletion(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = app.create_tenant("A").await;
    let b = app.create_tenant("B").await;
    let (x, y) = load(&pool, a, b).await;
    let token = viewer(&app, a);
    compact(&pool).await.expect("compaction");

    // Both days were computed; each change marks its hour in its own
    // transaction, and the figures change at once.
    let fx = Fixture {
        pool: &pool,
        tenant_id: a,
    };
    fx.call(NewCall {
        started_at: "2026-11-02T14:30:00Z",
        status: "no-answer",
        agent_id: Some(x),
        ..Default::default()
    })
    .await;
    sqlx::query(
        "UPDATE call_sessions SET status = 'completed', duration_seconds = 45,
                ended_at = started_at + interval '48 seconds'
         WHERE tenant_id = $1 AND started_at = '2026-11-03T09:00:00Z'",
    )
    .bind(a)
    .execute(&pool)
    .await
    .expect("late callback");
    let marks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kpi_dirty_hours WHERE tenant_id = $1")
            .bind(a)
            .fetch_one(&pool)
            .await
            .expect("marks");
    assert_eq!(marks, 2, "one mark per changed hour");
    assert_after_import_and_callback(&app, &token).await;

    // Two compactions at once: one takes the tenant, neither counts twice.
    let (one, two) = tokio::join!(compact(&pool), compact(&pool));
    let hours = one.expect("first").hours + two.expect("second").hours;
    assert!(hours >= 2, "the marked hours were computed again");
    let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM kpi_dirty_hours")
        .fetch_one(&pool)
        .await
        .expect("marks");
    assert_eq!(marks, 0, "marks consumed");
    assert_after_import_and_callback(&app, &token).await;
    compact(&pool).await.expect("again");
    assert_after_import_and_callback(&app, &token).await;

    // Deleting a call (an erasure) takes it out of the rolled-up figures.
    sqlx::query(
        "DELETE FROM call_sessions WHERE tenant_id = $1 AND started_at = '2026-11-02T14:30:00Z'",
    )
    .bind(a)
    .execute(&pool)
    .await
    .expect("delete");
    let (_, body) = get_json(&app, &format!("/client/kpis?{PERIOD}"), &token).await;
    assert_eq!(body["calls"]["total"], 9, "{body}");
    compact(&pool).await.expect("after the deletion");
    let (_, body) = get_json(&app, &format!("/client/kpis?{PERIOD}"), &token).await;
    assert_eq!(body["calls"]["total"], 9, "{body}");
    assert_eq!(body["calls"]["by_status"]["no-answer"], 1);

    // An agent deleted: its calls, and their tool executions (even one an
    // hour after the call rang), leave its figures.
    let c9: Uuid = sqlx::query_scalar("SELECT id FROM call_sessions WHERE agent_id = $1")
        .bind(y)
        .fetch_one(&pool)
        .await
        .expect("call 9");
    let tool = fx.tool("later").await;
    fx.tool_execution(c9, tool, "2026-11-03T13:10:00Z", "succeeded", Some(50))
        .await;
    compact(&pool).await.expect("with the later execution");
    let agent_y = format!("/client/kpis?{PERIOD}&agent_id={y}");
    let (_, body) = get_json(&app, &agent_y, &token).await;
    assert_eq!(body["tools"]["executions_total"], 2, "{body}");
    sqlx::query("DELETE FROM agents WHERE id = $1")
        .bind(y)
        .execute(&pool)
        .await
        .expect("delete agent");
    for when in ["before the compaction", "after it"] {
        let (_, body) = get_json(&app, &agent_y, &token).await;
        assert_eq!(body["calls"]["total"], 0, "{when}: {body}");
        assert_eq!(body["tools"]["executions_total"], 0, "{when}: {body}");
        compact(&pool).await.expect("after the agent left");
    }
}

/// Any period, any zone, any agent: the rollups give what the rows give.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn rollups_and_rows_agree_on_every_period(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = app.create_tenant("A").await;
    let b = app.create_tenant("B").await;
    let (x, _y) = load(&pool, a, b).await;
    // A month and more of calls, every 7 h 13 min, so periods cross whole
    // months, days and quarters.
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, direction, status,
             started_at, answered_at, ended_at, duration_seconds)
         SELECT gen_random_uuid(), $1, 'CAgrid' || n, CASE WHEN n % 3 = 0 THEN $2 END,
                CASE WHEN n % 4 = 0 THEN 'outbound-api' ELSE 'inbound' END,
                CASE WHEN n % 5 = 0 THEN 'busy' ELSE 'completed' END,
                at, CASE WHEN n % 5 <> 0 THEN at + interval '3 seconds' END,
                at + make_interval(secs => 10 + n % 97),
                CASE WHEN n % 2 = 0 AND n % 5 <> 0 THEN n % 89 END
         FROM generate_series(1, 250) AS n,
              LATERAL (SELECT timestamptz '2026-09-20T00:00:00Z' + n * interval '433 minutes') AS t(at)",
    )
    .bind(a)
    .bind(x)
    .execute(&pool)
    .await
    .expect("grid of calls");
    let token = viewer(&app, a);
    let periods = [
        "from=2026-09-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        "from=2026-09-20T05:07:00Z&to=2026-11-29T17:51:00Z",
        "from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z",
        "from=2026-10-14T23:59:00Z&to=2026-10-15T00:16:00Z",
    ];
    let queries: Vec<String> = periods
        .iter()
        .flat_map(|p| {
            [
                p.to_string(),
                format!("{p}&tz=Asia%2FKolkata"),
                format!("{p}&tz=America%2FNew_York&agent_id={x}"),
            ]
        })
        .collect();
    let mut from_rows = Vec::new();
    for q in &queries {
        let (status, body) = get_json(&app, &format!("/client/kpis?{q}"), &token).await;
        assert_eq!(status, 200, "{q}: {body}");
        from_rows.push(body);
    }
    compact(&pool).await.expect("compaction");
    let rolled: i64 = sqlx::query_scalar("SELECT count(*) FROM kpi_counts WHERE tenant_id = $1")
        .bind(a)
        .fetch_one(&pool)
        .await
        .expect("count rollups");
    assert!(rolled > 0, "the second pass reads the rollups");
    for (q, expected) in queries.iter().zip(&from_rows) {
        let (_, body) = get_json(&app, &format!("/client/kpis?{q}"), &token).await;
        assert_same_figures(&body, expected, q);
    }
    assert!(
        from_rows[0]["calls"]["total"].as_i64().expect("total") > 200,
        "the grid is in the first period"
    );
}

/// Equal, floats within rounding of the order they were summed in.
fn assert_same_figures(actual: &Value, expected: &Value, what: &str) {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().expect("number"), e.as_f64().expect("number"));
            assert!(
                (a - e).abs() <= 1e-9 * e.abs().max(1.0),
                "{what}: {a} != {e}"
            );
        }
        (Value::Object(a), Value::Object(e)) => {
            assert_eq!(a.len(), e.len(), "{what}");
            for (key, e) in e {
                assert_same_figures(&a[key], e, &format!("{what} {key}"));
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{what}");
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_same_figures(a, e, &format!("{what} [{i}]"));
            }
        }
        _ => assert_eq!(actual, expected, "{what}"),
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn marks_of_a_deleted_tenant_are_dropped(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let gone = app.create_tenant("Gone").await;
    let kept = app.create_tenant("Kept").await;
    for tenant in [gone, kept] {
        Fixture {
            pool: &pool,
            tenant_id: tenant,
        }
        .call(NewCall::default())
        .await;
    }
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(gone)
        .execute(&pool)
        .await
        .expect("delete tenant");
    let marks = |tenant: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM kpi_dirty_hours WHERE tenant_id = $1",
            )
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .expect("marks")
        }
    };
    assert!(marks(gone).await > 0, "the deletion marked its hours");
    compact(&pool).await.expect("compaction");
    assert_eq!(marks(gone).await, 0);
    assert_eq!(
        marks(kept).await,
        0,
        "the kept tenant's marks were consumed"
    );
}
