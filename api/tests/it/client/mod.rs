//! The client read API (`/client/*`): each endpoint, 400s that name the
//! parameter, isolation between two tenants with overlapping data, and keyset
//! pages that neither skip nor repeat while calls keep arriving.

mod kpis;
mod reads;

use serde_json::Value;
use shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use api::testing::{TestApp, spawn_app, spawn_app_with, status_json};

/// Direct inserts: the pipeline that normally fills these tables is other
/// helpers' work.
pub struct Fixture<'a> {
    pub pool: &'a PgPool,
    pub tenant_id: Uuid,
}

/// A call to insert; times are offsets in seconds from `started_at`.
pub struct NewCall<'a> {
    pub started_at: &'a str,
    pub status: &'a str,
    pub direction: &'a str,
    pub agent_id: Option<Uuid>,
    pub answered_after: Option<f64>,
    pub ended_after: Option<f64>,
    pub duration_seconds: Option<i32>,
    pub from_number: &'a str,
    pub to_number: &'a str,
}

impl Default for NewCall<'_> {
    fn default() -> Self {
        Self {
            started_at: "2026-11-01T10:00:00Z",
            status: "completed",
            direction: "inbound",
            agent_id: None,
            answered_after: None,
            ended_after: None,
            duration_seconds: None,
            from_number: "+14155550100",
            to_number: "+14155559999",
        }
    }
}

impl Fixture<'_> {
    pub async fn agent(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO agents (id, tenant_id, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(self.tenant_id)
            .bind(name)
            .execute(self.pool)
            .await
            .expect("insert agent");
        id
    }

    pub async fn version(&self, agent_id: Uuid, version: i32) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO agent_versions (id, tenant_id, agent_id, version, config, status, published_at)
             VALUES ($1, $2, $3, $4, '{}', 'published', '2026-10-01T00:00:00Z')",
        )
        .bind(id)
        .bind(self.tenant_id)
        .bind(agent_id)
        .bind(version)
        .execute(self.pool)
        .await
        .expect("insert version");
        id
    }

    pub async fn tool(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO tools (id, tenant_id, name, input_schema) VALUES ($1, $2, $3, '{}')",
        )
        .bind(id)
        .bind(self.tenant_id)
        .bind(name)
        .execute(self.pool)
        .await
        .expect("insert tool");
        id
    }

    pub async fn call(&self, c: NewCall<'_>) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, from_number, to_number,
                 direction, status, started_at, answered_at, ended_at, duration_seconds)
             VALUES ($1, $2, $3, $4, $5, $12, $6, $7, $8::timestamptz,
                     $8::timestamptz + make_interval(secs => $9),
                     $8::timestamptz + make_interval(secs => $10), $11)",
        )
        .bind(id)
        .bind(self.tenant_id)
        .bind(format!("CA{}", id.simple()))
        .bind(c.agent_id)
        .bind(c.from_number)
        .bind(c.direction)
        .bind(c.status)
        .bind(c.started_at)
        .bind(c.answered_after)
        .bind(c.ended_after)
        .bind(c.duration_seconds)
        .bind(c.to_number)
        .execute(self.pool)
        .await
        .expect("insert call");
        id
    }

    pub async fn tool_execution(
        &self,
        call_id: Uuid,
        tool_id: Uuid,
        created_at: &str,
        status: &str,
        latency_ms: Option<i32>,
    ) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, status, input,
                 output, latency_ms, attempts, deadline_at, created_at)
             VALUES ($1, $2, $3, $4, 'trace-1', $5, '{\"q\": 1}', '{\"ok\": true}', $6, 1,
                     $7::timestamptz + interval '30 seconds', $7::timestamptz)",
        )
        .bind(id)
        .bind(self.tenant_id)
        .bind(call_id)
        .bind(tool_id)
        .bind(status)
        .bind(latency_ms)
        .bind(created_at)
        .execute(self.pool)
        .await
        .expect("insert tool execution");
        id
    }

    pub async fn event(&self, call_id: Uuid, kind: &str, at: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, occurred_at)
             VALUES ($1, $2, $3, $4, $5, jsonb_build_object('type', $4::text), $6::timestamptz)",
        )
        .bind(id)
        .bind(self.tenant_id)
        .bind(call_id)
        .bind(kind)
        .bind(id.to_string())
        .bind(at)
        .execute(self.pool)
        .await
        .expect("insert event");
        id
    }

    pub async fn segment(&self, call_id: Uuid, speaker: &str, text: &str, start_ms: i32) {
        sqlx::query(
            "INSERT INTO transcript_segments (id, tenant_id, call_id, speaker, text, start_ms, end_ms, occurred_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6 + 900, now())",
        )
        .bind(Uuid::now_v7())
        .bind(self.tenant_id)
        .bind(call_id)
        .bind(speaker)
        .bind(text)
        .bind(start_ms)
        .execute(self.pool)
        .await
        .expect("insert segment");
    }

    pub async fn recording(&self, call_id: Uuid, sid: &str, url: Option<&str>) {
        sqlx::query(
            "INSERT INTO recordings (id, tenant_id, call_id, recording_sid, url, duration_seconds, channels, status)
             VALUES ($1, $2, $3, $4, $5, 42, 2, 'completed')",
        )
        .bind(Uuid::now_v7())
        .bind(self.tenant_id)
        .bind(call_id)
        .bind(sid)
        .bind(url)
        .execute(self.pool)
        .await
        .expect("insert recording");
    }
}

pub async fn get_json(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    status_json(app.get(path, Some(token)).await).await
}

pub fn viewer(app: &TestApp, tenant_id: Uuid) -> String {
    app.token(tenant_id, Role::ClientViewer)
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn list_filters_and_orders_newest_first(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let tenant = app.create_tenant("A").await;
    let fx = Fixture {
        pool: &pool,
        tenant_id: tenant,
    };
    let agent = fx.agent("Front desk").await;
    let c1 = fx
        .call(NewCall {
            started_at: "2026-11-01T10:00:00Z",
            agent_id: Some(agent),
            answered_after: Some(5.0),
            ended_after: Some(65.0),
            ..Default::default()
        })
        .await;
    let c2 = fx
        .call(NewCall {
            started_at: "2026-11-02T10:00:00Z",
            status: "busy",
            from_number: "+33612345678",
            ..Default::default()
        })
        .await;
    let c3 = fx
        .call(NewCall {
            started_at: "2026-11-03T10:00:00Z",
            agent_id: Some(agent),
            duration_seconds: Some(17),
            answered_after: Some(1.0),
            to_number: "+442079460000",
            ..Default::default()
        })
        .await;
    let token = viewer(&app, tenant);

    let (status, page) = get_json(&app, "/client/calls", &token).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [c3, c2, c1].map(|c| c.to_string()));
    assert!(page["next_cursor"].is_null());
    let first = &page["items"][0];
    assert_eq!(first["duration_seconds"], 17, "Twilio's CallDuration wins");
    assert_eq!(first["agent_name"], "Front desk");
    assert_eq!(page["items"][2]["duration_seconds"], 60, "answer to end");
    assert!(page["items"][1]["duration_seconds"].is_null());

    let (_, page) = get_json(&app, "/client/calls?status=busy", &token).await;
    assert_eq!(ids(&page), [c2.to_string()]);
    let (_, page) = get_json(&app, &format!("/client/calls?agent_id={agent}"), &token).await;
    assert_eq!(ids(&page), [c3, c1].map(|c| c.to_string()));
    let (_, page) = get_json(
        &app,
        "/client/calls?from=2026-11-02T10:00:00Z&to=2026-11-03T10:00:00Z",
        &token,
    )
    .await;
    assert_eq!(ids(&page), [c2.to_string()], "from inclusive, to exclusive");
    // An unencoded '+' in an offset arrives as a space and still works.
    let (status, page) =
        get_json(&app, "/client/calls?from=2026-11-02T11:00:00+01:00", &token).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [c3, c2].map(|c| c.to_string()));
    let (_, page) = get_json(&app, "/client/calls?q=%2B33%206%2012", &token).await;
    assert_eq!(ids(&page), [c2.to_string()], "q matches part of the caller");
    let (_, page) = get_json(&app, "/client/calls?q=0100", &token).await;
    assert_eq!(ids(&page), [c3, c1].map(|c| c.to_string()));
    let (_, page) = get_json(&app, "/client/calls?q=207%20946", &token).await;
    assert_eq!(ids(&page), [c3.to_string()], "q matches part of the callee");
    let (_, page) = get_json(&app, "/client/calls?q=5559999", &token).await;
    assert_eq!(ids(&page), [c2, c1].map(|c| c.to_string()));
    let (_, page) = get_json(&app, "/client/calls?q=7777", &token).await;
    assert_eq!(ids(&page), Vec::<String>::new(), "a miss");
    let sid = format!("CA{}", c2.simple());
    let (_, page) = get_json(&app, &format!("/client/calls?q={sid}"), &token).await;
    assert_eq!(ids(&page), [c2.to_string()], "q finds a CallSid");
    // Another tenant's call, by its number or its CallSid: never found.
    let other = Fixture {
        pool: &pool,
        tenant_id: app.create_tenant("B").await,
    };
    let foreign = other
        .call(NewCall {
            from_number: "+33612345678",
            ..Default::default()
        })
        .await;
    let sid = format!("CA{}", foreign.simple());
    let (_, page) = get_json(&app, &format!("/client/calls?q={sid}"), &token).await;
    assert_eq!(ids(&page), Vec::<String>::new());
    let (_, page) = get_json(&app, "/client/calls?q=%2B33612", &token).await;
    assert_eq!(ids(&page), [c2.to_string()]);
    let (_, page) = get_json(&app, "/client/calls?limit=2", &token).await;
    assert_eq!(ids(&page), [c3, c2].map(|c| c.to_string()));
    let cursor = page["next_cursor"].as_str().expect("more pages");
    let (_, page) = get_json(
        &app,
        &format!("/client/calls?limit=2&cursor={cursor}"),
        &token,
    )
    .await;
    assert_eq!(ids(&page), [c1.to_string()]);
    assert!(page["next_cursor"].is_null());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_parameters_are_400s_naming_the_parameter(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("A").await;
    let token = viewer(&app, tenant);
    let cases = [
        ("/client/calls?limit=0", "limit"),
        ("/client/calls?limit=201", "limit"),
        ("/client/calls?limit=ten", "limit"),
        ("/client/calls?cursor=not-a-cursor", "cursor"),
        ("/client/calls?status=done", "status"),
        ("/client/calls?agent_id=42", "agent_id"),
        ("/client/calls?from=yesterday", "from"),
        ("/client/calls?to=2026-13-01T00:00:00Z", "to"),
        (
            "/client/calls?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
            "from",
        ),
        ("/client/calls?q=abc", "q"),
        ("/client/calls?q=12", "at least 3"),
        ("/client/kpis?from=2026-11-01", "from"),
        ("/client/kpis?to=soon", "to"),
        (
            "/client/kpis?from=2025-01-01T00:00:00Z&to=2026-11-01T00:00:00Z",
            "366 days",
        ),
        (
            "/client/kpis?from=2026-11-02T00:00:00Z&to=2026-11-02T00:00:00Z",
            "from",
        ),
        ("/client/kpis?tz=Mars%2FOlympus", "tz"),
        ("/client/kpis?agent_id=x", "agent_id"),
        ("/client/calls/not-a-uuid", "UUID"),
    ];
    for (path, name) in cases {
        let (status, body) = get_json(&app, path, &token).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(name), "{path}: {message}");
    }
    let call = Fixture {
        pool: &app.pool,
        tenant_id: tenant,
    }
    .call(NewCall::default())
    .await;
    let (status, body) = get_json(
        &app,
        &format!("/client/calls/{call}/transcript?format=xml"),
        &token,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("format")
    );
    // No token at all.
    let (status, _) = status_json(app.get("/client/calls", None).await).await;
    assert_eq!(status, 401);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn call_detail_has_agent_version_durations_and_ordered_timeline(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let tenant = app.create_tenant("A").await;
    let fx = Fixture {
        pool: &pool,
        tenant_id: tenant,
    };
    let agent = fx.agent("Front desk").await;
    let version = fx.version(agent, 3).await;
    let tool = fx.tool("book_table").await;
    let call = fx
        .call(NewCall {
            started_at: "2026-11-01T10:00:00Z",
            agent_id: Some(agent),
            answered_after: Some(4.0),
            ended_after: Some(94.0),
            ..Default::default()
        })
        .await;
    sqlx::query("UPDATE call_sessions SET agent_version_id = $1 WHERE id = $2")
        .bind(version)
        .bind(call)
        .execute(&pool)
        .await
        .expect("set version");
    // Inserted out of order on purpose.
    let e_end = fx
        .event(call, "call.completed", "2026-11-01T10:01:34Z")
        .await;
    let e_in = fx.event(call, "call.inbound", "2026-11-01T10:00:00Z").await;
    let t1 = fx
        .tool_execution(call, tool, "2026-11-01T10:00:30Z", "succeeded", Some(120))
        .await;
    let e_mid = fx
        .event(call, "call.in-progress", "2026-11-01T10:00:04Z")
        .await;

    let token = viewer(&app, tenant);
    let (status, body) = get_json(&app, &format!("/client/calls/{call}"), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent"]["name"], "Front desk");
    assert_eq!(body["version"]["id"], version.to_string());
    assert_eq!(body["version"]["version"], 3);
    assert_eq!(body["durations"]["ring_seconds"], 4.0);
    assert_eq!(body["durations"]["talk_seconds"], 90.0);
    assert_eq!(body["durations"]["total_seconds"], 94.0);
    let timeline: Vec<(String, String)> = body["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().expect("kind").to_owned(),
                i["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        timeline,
        vec![
            ("event".into(), e_in.to_string()),
            ("event".into(), e_mid.to_string()),
            ("tool_execution".into(), t1.to_string()),
            ("event".into(), e_end.to_string()),
        ]
    );
    let tool_item = &body["timeline"][2];
    assert_eq!(tool_item["tool_name"], "book_table");
    assert_eq!(tool_item["latency_ms"], 120);
    assert_eq!(body["timeline"][1]["type"], "call.in-progress");
    assert_eq!(body["timeline_truncated"], false);

    let (status, body) = get_json(&app, &format!("/client/calls/{}", Uuid::now_v7()), &token).await;
    assert_eq!(status, 404, "{body}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn transcript_in_order_as_json_and_text(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let tenant = app.create_tenant("A").await;
    let fx = Fixture {
        pool: &pool,
        tenant_id: tenant,
    };
    let call = fx.call(NewCall::default()).await;
    fx.segment(call, "caller", "I'd like a table for two.", 2_500)
        .await;
    fx.segment(call, "agent", "Hello, Chez Marcel.", 0).await;
    fx.segment(call, "agent", "For when?", 61_000).await;
    let token = viewer(&app, tenant);

    let (status, body) = get_json(&app, &format!("/client/calls/{call}/transcript"), &token).await;
    assert_eq!(status, 200, "{body}");
    let texts: Vec<&str> = body["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["text"].as_str().expect("text"))
        .collect();
    assert_eq!(
        texts,
        [
            "Hello, Chez Marcel.",
            "I'd like a table for two.",
            "For when?"
        ]
    );
    assert_eq!(body["segments"][1]["speaker"], "caller");
    assert_eq!(body["segments"][1]["start_ms"], 2500);
    assert_eq!(body["segments"][1]["end_ms"], 3400);

    let resp = app
        .get(
            &format!("/client/calls/{call}/transcript?format=text"),
            Some(&token),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("header")
            .starts_with("text/plain")
    );
    assert_eq!(
        resp.text().await.expect("body"),
        "[00:00] Agent: Hello, Chez Marcel.\n\
         [00:02] Caller: I'd like a table for two.\n\
         [01:01] Agent: For when?\n"
    );

    // A call without segments has an empty transcript, not a 404.
    let silent = fx.call(NewCall::default()).await;
    let (status, body) =
        get_json(&app, &format!("/client/calls/{silent}/transcript"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["segments"], serde_json::json!([]));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn recording_url_only_when_exposed(pool: PgPool) {
    let url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1";
    let hidden = spawn_app(pool.clone()).await;
    let tenant = hidden.create_tenant("A").await;
    let fx = Fixture {
        pool: &pool,
        tenant_id: tenant,
    };
    let call = fx.call(NewCall::default()).await;
    fx.recording(call, "RE1", Some(url)).await;
    let bare = fx.call(NewCall::default()).await;
    let token = viewer(&hidden, tenant);

    let (status, body) =
        get_json(&hidden, &format!("/client/calls/{call}/recording"), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["has_recording"], true);
    assert_eq!(body["urls_exposed"], false);
    let rec = &body["recordings"][0];
    assert_eq!(rec["sid"], "RE1");
    assert_eq!(rec["duration_seconds"], 42);
    assert_eq!(rec["channels"], 2);
    assert_eq!(rec["status"], "completed");
    assert_eq!(rec["url_available"], true);
    assert!(rec.get("url").is_none(), "{rec}");
    assert!(!body.to_string().contains("twilio.com"));

    let (status, body) =
        get_json(&hidden, &format!("/client/calls/{bare}/recording"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["has_recording"], false);
    assert_eq!(body["recordings"], serde_json::json!([]));

    let exposed = spawn_app_with(pool.clone(), |c| c.recordings_expose_url = true).await;
    let token = viewer(&exposed, tenant);
    let (status, body) =
        get_json(&exposed, &format!("/client/calls/{call}/recording"), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["urls_exposed"], true);
    assert_eq!(body["recordings"][0]["url"], url);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn tenants_with_overlapping_data_see_only_their_own(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = app.create_tenant("A").await;
    let b = app.create_tenant("B").await;
    let fa = Fixture {
        pool: &pool,
        tenant_id: a,
    };
    let fb = Fixture {
        pool: &pool,
        tenant_id: b,
    };
    // Same times, numbers and statuses in both tenants.
    let mut a_calls = Vec::new();
    let mut b_calls = Vec::new();
    for hour in 10..14 {
        let at = format!("2026-11-01T{hour}:00:00Z");
        let new = || NewCall {
            started_at: &at,
            answered_after: Some(1.0),
            ended_after: Some(61.0),
            ..Default::default()
        };
        a_calls.push(fa.call(new()).await);
        b_calls.push(fb.call(new()).await);
    }
    let b_call = b_calls[0];
    fb.segment(b_call, "caller", "tenant B secret", 0).await;
    fb.recording(b_call, "REB", Some("https://b.example/rec"))
        .await;
    let token_a = viewer(&app, a);
    // Internal roles read the client surface too, still scoped to their tenant.
    let ops_a = app.token(a, Role::InternalOperator);

    for token in [&token_a, &ops_a] {
        let (status, page) = get_json(&app, "/client/calls", token).await;
        assert_eq!(status, 200);
        let mut seen = ids(&page);
        seen.sort();
        let mut expected: Vec<String> = a_calls.iter().map(Uuid::to_string).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    let (_, kpis) = get_json(
        &app,
        "/client/kpis?from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z",
        &token_a,
    )
    .await;
    assert_eq!(kpis["calls"]["total"], 4);
    assert_eq!(kpis["duration"]["total_minutes"], 4.0);

    // B's call from A: exactly the answer for a call that does not exist.
    let missing = Uuid::now_v7();
    for suffix in ["", "/transcript", "/transcript?format=text", "/recording"] {
        let theirs = get_json(&app, &format!("/client/calls/{b_call}{suffix}"), &token_a).await;
        let nobody = get_json(&app, &format!("/client/calls/{missing}{suffix}"), &token_a).await;
        assert_eq!(theirs.0, 404, "{suffix}: {}", theirs.1);
        assert_eq!(theirs, nobody, "{suffix}");
    }
    // And B still sees its own.
    let (status, _) = get_json(
        &app,
        &format!("/client/calls/{b_call}/transcript"),
        &viewer(&app, b),
    )
    .await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn pages_neither_skip_nor_repeat_while_calls_arrive(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let tenant = app.create_tenant("A").await;
    let fx = Fixture {
        pool: &pool,
        tenant_id: tenant,
    };
    // 30 calls; groups of three share a started_at, so the id breaks ties.
    let mut existing: Vec<(String, Uuid)> = Vec::new();
    for i in 0..30 {
        let at = format!("2026-11-01T10:{:02}:00Z", i / 3);
        let id = fx
            .call(NewCall {
                started_at: &at,
                ..Default::default()
            })
            .await;
        existing.push((at, id));
    }
    // The order the API promises: started_at, then id, both descending.
    existing.sort_by(|x, y| y.cmp(x));
    let expected: Vec<String> = existing.iter().map(|(_, id)| id.to_string()).collect();

    let token = viewer(&app, tenant);
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut arrivals = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/client/calls?limit=7&cursor={c}"),
            None => "/client/calls?limit=7".to_owned(),
        };
        let (status, page) = get_json(&app, &path, &token).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        // New calls keep arriving between pages: one newer than everything,
        // one sharing the newest existing time (a larger id, so it sorts into
        // the part already paged past).
        arrivals.push(
            fx.call(NewCall {
                started_at: "2026-11-02T00:00:00Z",
                ..Default::default()
            })
            .await,
        );
        arrivals.push(
            fx.call(NewCall {
                started_at: "2026-11-01T10:09:00Z",
                ..Default::default()
            })
            .await,
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected, "every existing call exactly once, in order");
    assert_eq!(arrivals.len(), 10);
    // A fresh first page shows the newcomers.
    let (_, page) = get_json(&app, "/client/calls?limit=200", &token).await;
    assert_eq!(ids(&page).len(), 40);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn openapi_documents_the_client_routes(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, doc) = status_json(app.get("/openapi.json", None).await).await;
    assert_eq!(status, 200);
    for path in [
        "/client/kpis",
        "/client/calls",
        "/client/calls/{call_id}",
        "/client/calls/{call_id}/transcript",
        "/client/calls/{call_id}/recording",
    ] {
        let op = &doc["paths"][path]["get"];
        assert!(op.is_object(), "{path} missing");
        assert!(op["security"].is_array(), "{path} has no security");
    }
    let params = doc["paths"]["/client/calls"]["get"]["parameters"].to_string();
    for name in ["status", "agent_id", "from", "to", "q", "limit", "cursor"] {
        assert!(params.contains(&format!("\"{name}\"")), "{name}");
    }
}

/// The client sees under which storage mode each call was written, and
/// which transcript segments were redacted.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_storage_mode_and_redactions_are_shown(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let tenant = app.create_tenant("A").await;
    let fx = Fixture {
        pool: &pool,
        tenant_id: tenant,
    };
    let plain = fx.call(NewCall::default()).await;
    let masked = fx
        .call(NewCall {
            started_at: "2026-11-01T11:00:00Z",
            from_number: "+*******0100",
            ..NewCall::default()
        })
        .await;
    sqlx::query("UPDATE call_sessions SET data_storage = 'everything_except_pii' WHERE id = $1")
        .bind(masked)
        .execute(&pool)
        .await
        .expect("mode");
    fx.segment(masked, "caller", "my card is [CARD]", 0).await;
    fx.segment(masked, "agent", "thank you", 1_000).await;
    sqlx::query(
        "UPDATE transcript_segments SET redacted = true WHERE call_id = $1 AND speaker = 'caller'",
    )
    .bind(masked)
    .execute(&pool)
    .await
    .expect("redacted");
    let token = viewer(&app, tenant);

    let (status, list) = get_json(&app, "/client/calls", &token).await;
    assert_eq!(status, 200, "{list}");
    let modes: Vec<(&str, &str)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| {
            (
                c["from_number"].as_str().expect("from"),
                c["data_storage"].as_str().expect("mode"),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("+*******0100", "everything_except_pii"),
            ("+14155550100", "everything")
        ]
    );
    let (_, detail) = get_json(&app, &format!("/client/calls/{plain}"), &token).await;
    assert_eq!(detail["data_storage"], "everything");
    let (_, detail) = get_json(&app, &format!("/client/calls/{masked}"), &token).await;
    assert_eq!(detail["data_storage"], "everything_except_pii");
    let (_, transcript) =
        get_json(&app, &format!("/client/calls/{masked}/transcript"), &token).await;
    let marks: Vec<bool> = transcript["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["redacted"].as_bool().expect("redacted"))
        .collect();
    assert_eq!(marks, [true, false]);
}
