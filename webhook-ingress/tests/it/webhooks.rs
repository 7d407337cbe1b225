use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::*;

const INBOUND: &str = "/twilio/webhook/inbound";
const STATUS: &str = "/twilio/webhook/status";
const RECORDING: &str = "/twilio/webhook/recording";

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn signed_inbound_commits_once_answers_stream_and_publishes(pool: PgPool) {
    let app = spawn_ingress(pool).await;
    let seeded = seed_number(&app.pool, "+14155550111").await;
    let params = inbound_params("CA00000000000000000000000000000001", &seeded.e164);

    let (status, body) = app.post_signed(INBOUND, &params).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<Connect><Stream url=\"wss://runtime.example.com/media\">"),
        "{body}"
    );
    assert!(
        body.contains(r#"<Parameter name="callSid" value="CA00000000000000000000000000000001"/>"#)
    );
    assert!(body.contains(&format!(r#"value="{}""#, seeded.tenant_id)));
    assert!(body.contains(&format!(r#"value="{}""#, seeded.agent_id)));
    // The token is escaped, so the document stays well-formed.
    assert!(
        body.contains(r#"value="stream&quot;token&amp;&lt;x&gt;""#),
        "{body}"
    );

    // Twilio retries: nothing new.
    for _ in 0..5 {
        let (status, again) = app.post_signed(INBOUND, &params).await;
        assert_eq!(status, 200);
        assert_eq!(again, body);
    }
    assert_eq!(app.count("SELECT count(*) FROM call_sessions").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM call_events").await, 1);
    let (tenant, agent, version, number): (
        uuid::Uuid,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
    ) = sqlx::query_as(
        "SELECT tenant_id, agent_id, agent_version_id, phone_number_id FROM call_sessions",
    )
    .fetch_one(&app.pool)
    .await
    .expect("session");
    assert_eq!(tenant, seeded.tenant_id);
    assert_eq!(agent, Some(seeded.agent_id));
    // Pinned as it rang: the agent's active version answers the call.
    assert_eq!(version, Some(seeded.version_id));
    assert_eq!(number, Some(seeded.phone_number_id));

    // Published once (deduplicated by event id); the dispatch-worker, not
    // the ingress, records it published.
    let stream = app.subjects.calls_stream();
    assert!(
        eventually(Duration::from_secs(10), || async {
            stream_messages(&app.nats, &stream).await == 1
        })
        .await
    );
    assert_eq!(
        app.count("SELECT count(*) FROM call_events WHERE published_at IS NULL")
            .await,
        1
    );
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_or_missing_signature_is_403_and_stores_nothing(pool: PgPool) {
    let app = spawn_ingress(pool).await;
    let seeded = seed_number(&app.pool, "+14155550112").await;
    let params = inbound_params("CA00000000000000000000000000000002", &seeded.e164);
    let (status, body) = app
        .post_raw(INBOUND, &params, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("invalid_signature"));
    let (status, _) = app.post_raw(INBOUND, &params, None).await;
    assert_eq!(status, 403);
    // Signed for other parameters than those sent.
    let url = format!("{}{INBOUND}", app.base);
    let mut tampered = params.clone();
    let sig = shared::twilio::compute_signature(AUTH_TOKEN, &url, &tampered);
    tampered.push(("Extra".into(), "1".into()));
    let (status, _) = app.post_raw(INBOUND, &tampered, Some(&sig)).await;
    assert_eq!(status, 403);
    assert_eq!(app.count("SELECT count(*) FROM call_sessions").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM call_events").await, 0);
    assert_eq!(
        stream_messages(&app.nats, &app.subjects.calls_stream()).await,
        0
    );
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_bodies_are_400_and_413(pool: PgPool) {
    let app = spawn_ingress(pool).await;
    let seeded = seed_number(&app.pool, "+14155550113").await;
    let mut params = inbound_params("CA1", &seeded.e164);
    params.retain(|(k, _)| k != "CallSid");
    let (status, body) = app.post_signed(INBOUND, &params).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("CallSid"));

    // Not a form.
    let resp = app
        .client
        .post(format!("{}{INBOUND}", app.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);

    // Invalid percent-encoding of UTF-8.
    let resp = app
        .client
        .post(format!("{}{INBOUND}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("CallSid=%FF%FE")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);

    // A correctly signed form with a NUL in a value (Postgres cannot store
    // it): 400, nothing stored.
    let mut nul = inbound_params("CA1NUL", &seeded.e164);
    nul.push(("CallerName".into(), "Eve\u{0}".into()));
    let (status, body) = app.post_signed(INBOUND, &nul).await;
    assert_eq!(status, 400, "{body}");

    let mut big = inbound_params("CA2", &seeded.e164);
    big.push(("Padding".into(), "x".repeat(70 * 1024)));
    let (status, _) = app.post_signed(INBOUND, &big).await;
    assert_eq!(status, 413);
    assert_eq!(app.count("SELECT count(*) FROM call_sessions").await, 0);
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn unknown_or_inactive_number_is_rejected(pool: PgPool) {
    let app = spawn_ingress(pool).await;
    let seeded = seed_number(&app.pool, "+14155550114").await;
    let (status, body) = app
        .post_signed(INBOUND, &inbound_params("CA3", "+14155559999"))
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("<Reject/>"), "{body}");
    sqlx::query("UPDATE phone_numbers SET status = 'inactive' WHERE id = $1")
        .bind(seeded.phone_number_id)
        .execute(&app.pool)
        .await
        .expect("deactivate");
    // A different CallSid, after the cache TTL.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let (_, body) = app
                .post_signed(INBOUND, &inbound_params("CA4", &seeded.e164))
                .await;
            body.contains("<Reject/>")
        })
        .await
    );
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn status_and_recording_callbacks_are_idempotent(pool: PgPool) {
    let app = spawn_ingress(pool).await;
    let seeded = seed_number(&app.pool, "+14155550115").await;
    let sid = "CA00000000000000000000000000000005";
    let (status, _) = app
        .post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
        .await;
    assert_eq!(status, 200);
    let mut completed = inbound_params(sid, &seeded.e164);
    completed.retain(|(k, _)| k != "CallStatus");
    completed.push(("CallStatus".into(), "completed".into()));
    completed.push(("CallDuration".into(), "42".into()));
    for _ in 0..3 {
        let (status, body) = app.post_signed(STATUS, &completed).await;
        assert_eq!(status, 200, "{body}");
    }
    let rec: Vec<(String, String)> = [
        ("CallSid", sid),
        ("RecordingSid", "RE1"),
        ("RecordingUrl", "https://api.twilio.com/rec/RE1"),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "40"),
        ("RecordingChannels", "1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for _ in 0..3 {
        let (status, body) = app.post_signed(RECORDING, &rec).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM call_sessions").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM call_events WHERE type = 'call.status'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM call_events WHERE type = 'call.recording'")
            .await,
        1
    );
    // A recording for a call we never saw.
    let mut unknown = rec.clone();
    unknown[0].1 = "CAunknown".into();
    let (status, _) = app.post_signed(RECORDING, &unknown).await;
    assert_eq!(status, 404);
    // Missing CallStatus.
    let (status, _) = app
        .post_signed(STATUS, &[("CallSid".to_owned(), sid.to_owned())])
        .await;
    assert_eq!(status, 400);
    assert!(
        eventually(Duration::from_secs(10), || async {
            stream_messages(&app.nats, &app.subjects.calls_stream()).await == 3
        })
        .await
    );
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn nats_down_still_accepts_the_call(pool: PgPool) {
    // Nothing listens on port 1.
    let app = spawn_ingress_with(pool, "nats://127.0.0.1:1", |_| {}).await;
    let seeded = seed_number(&app.pool, "+14155550116").await;
    let (status, body) = app
        .post_signed(INBOUND, &inbound_params("CA6", &seeded.e164))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Connect>"));
    assert_eq!(
        app.count("SELECT count(*) FROM call_events WHERE needs_publish AND published_at IS NULL")
            .await,
        1
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn postgres_down_is_503(pool: PgPool) {
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .expect("lazy pool");
    let app = spawn_ingress(dead).await;
    drop(pool);
    let (status, body) = app
        .post_signed(INBOUND, &inbound_params("CA7", "+14155550117"))
        .await;
    assert_eq!(status, 503, "{body}");
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn without_stream_url_says_and_hangs_up(pool: PgPool) {
    let app = spawn_ingress_with(pool, "nats://127.0.0.1:4222", |c| {
        c.twilio.twilio_media_stream_url = None;
    })
    .await;
    let seeded = seed_number(&app.pool, "+14155550118").await;
    let (status, body) = app
        .post_signed(INBOUND, &inbound_params("CA8", &seeded.e164))
        .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<Say>") && body.contains("<Hangup/>"),
        "{body}"
    );
    delete_streams(&app.nats, &app.subjects).await;
}

#[test]
fn startup_refuses_validation_without_secrets() {
    let mut config = config_for("x", "http://127.0.0.1:1");
    config.twilio.twilio_auth_token = None;
    assert!(config.twilio.signature_check().is_err());
    let mut config = config_for("x", "http://127.0.0.1:1");
    config.twilio.twilio_webhook_base_url = None;
    assert!(config.twilio.signature_check().is_err());
    config.twilio.twilio_validate_signature = false;
    assert!(config.twilio.signature_check().is_ok());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_webhooks_share_commits_and_stay_exact(pool: PgPool) {
    let app = spawn_ingress(pool).await;
    let seeded = seed_number(&app.pool, "+14155550119").await;
    // 100 distinct calls, each sent twice at once (a retry racing the
    // original), so groups hold both distinct and repeated CallSids.
    let sids: Vec<String> = (0..100).map(|i| format!("CA{i:032}")).collect();
    let answers = futures::future::join_all(sids.iter().chain(sids.iter()).map(|sid| {
        let app = &app;
        let params = inbound_params(sid, &seeded.e164);
        async move { (sid.clone(), app.post_signed(INBOUND, &params).await) }
    }))
    .await;
    for (sid, (status, body)) in &answers {
        assert_eq!(*status, 200, "{sid}: {body}");
        let call_id: uuid::Uuid =
            sqlx::query_scalar("SELECT id FROM call_sessions WHERE call_sid = $1")
                .bind(sid)
                .fetch_one(&app.pool)
                .await
                .expect("session committed before the answer");
        assert!(
            body.contains(&format!(r#"name="callId" value="{call_id}""#)),
            "{body}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM call_sessions").await, 100);
    assert_eq!(app.count("SELECT count(*) FROM call_events").await, 100);
    // Commits were shared: the group-size histogram's sum exceeds its count.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.ops))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    eprintln!(
        "group commits: {} webhooks in {} transactions",
        value("ingress_group_commit_size_sum"),
        value("ingress_group_commit_size_count")
    );
    assert!(value("ingress_group_commit_size_sum") > value("ingress_group_commit_size_count"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            stream_messages(&app.nats, &app.subjects.calls_stream()).await == 100
        })
        .await
    );
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_lingering_group_takes_the_webhooks_that_follow_its_first(pool: PgPool) {
    // One writer, and a linger far longer than the gaps between the sends:
    // webhooks that arrive one after another, not together, share the
    // first one's transaction.
    let app = spawn_ingress_with(pool, "nats://127.0.0.1:4222", |config| {
        config.db_writers = 1;
        config.group_linger = Duration::from_millis(1500);
    })
    .await;
    let seeded = seed_number(&app.pool, "+14155550121").await;
    let answers = futures::future::join_all((0..3u64).map(|i| {
        let app = &app;
        let params = inbound_params(&format!("CA{i:032}"), &seeded.e164);
        async move {
            // Staggered sends, so each arrives after the previous one.
            tokio::time::sleep(Duration::from_millis(150 * i)).await;
            app.post_signed(INBOUND, &params).await
        }
    }))
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM call_sessions")
            .fetch_one(&app.pool)
            .await
            .expect("count transactions");
    assert_eq!(app.count("SELECT count(*) FROM call_sessions").await, 3);
    assert_eq!(
        transactions, 1,
        "the three webhooks were committed together"
    );
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn status_callback_to_a_number_without_agent_creates_no_session(pool: PgPool) {
    let seeded = seed_number(&pool, "+14155550117").await;
    sqlx::query("UPDATE phone_numbers SET agent_id = NULL WHERE id = $1")
        .bind(seeded.phone_number_id)
        .execute(&pool)
        .await
        .expect("unassign the agent");
    // Started after the change, so its route cache has never seen the agent.
    let app = spawn_ingress(pool).await;
    let mut params = inbound_params("CA00000000000000000000000000000017", &seeded.e164);
    params.retain(|(k, _)| k != "CallStatus");
    params.push(("CallStatus".into(), "busy".into()));
    // No call is known and, as inbound would have, none is created.
    let (status, body) = app.post_signed(STATUS, &params).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown_call"), "{body}");
    assert_eq!(app.count("SELECT count(*) FROM call_sessions").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM call_events").await, 0);
    delete_streams(&app.nats, &app.subjects).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn one_group_may_name_a_call_sid_twice(pool: PgPool) {
    use webhook_ingress::store::{CallWrite, SessionSeed, Stored, write_group};
    let seeded = seed_number(&pool, "+14155550118").await;
    let write = |sid: &str, kind: &'static str, key: &str| CallWrite {
        call_sid: sid.to_owned(),
        seed: Some(SessionSeed {
            tenant_id: seeded.tenant_id,
            phone_number_id: seeded.phone_number_id,
            agent_id: Some(seeded.agent_id),
            account_sid: None,
            from: "+14155550100".into(),
            to: seeded.e164.clone(),
            direction: "inbound".into(),
            data_storage: Default::default(),
        }),
        event_id: uuid::Uuid::now_v7(),
        kind,
        idempotency_key: key.to_owned(),
        payload: serde_json::json!({}),
        occurred_at: chrono::Utc::now(),
        traceparent: shared::trace::TraceContext::new_root().to_string(),
    };
    let a = "CA00000000000000000000000000000018";
    let b = "CA00000000000000000000000000000019";
    // A call whose inbound webhook went to the fallback URL: its status
    // callback creates the session.
    let c = "CA00000000000000000000000000000020";
    let group = [
        write(a, "call.inbound", a),
        write(b, "call.inbound", b),
        // Its first status callback, and a Twilio retry of the inbound
        // webhook, land in the same group.
        write(a, "call.status", &format!("{a}:ringing")),
        write(a, "call.inbound", a),
        write(c, "call.status", &format!("{c}:in-progress")),
    ];
    let refs: Vec<&CallWrite> = group.iter().collect();
    let stored = write_group(&pool, &refs)
        .await
        .expect("the group commits as one");
    let calls: Vec<(uuid::Uuid, bool)> = stored
        .iter()
        .map(|s| match s {
            Stored::Call {
                call_id, new_event, ..
            } => (*call_id, new_event.is_some()),
            Stored::UnknownCall => panic!("every write has a seed"),
        })
        .collect();
    assert_eq!(calls[0].0, calls[2].0);
    assert_eq!(calls[0].0, calls[3].0);
    assert_ne!(calls[0].0, calls[1].0);
    assert_eq!(
        calls.iter().map(|c| c.1).collect::<Vec<_>>(),
        [true, true, true, false, true]
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM call_sessions")
        .fetch_one(&pool)
        .await
        .expect("count");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!((sessions, events), (3, 4));
    // The tenant has no limit: its inbound calls are admitted without the
    // admission function, and a session a callback made is not counted.
    let live: Vec<(String, bool)> =
        sqlx::query_as("SELECT call_sid, live FROM call_sessions ORDER BY call_sid")
            .fetch_all(&pool)
            .await
            .expect("sessions");
    assert_eq!(
        live,
        [
            (a.to_owned(), true),
            (b.to_owned(), true),
            (c.to_owned(), false)
        ]
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn readiness_and_metrics_are_served_only_on_the_ops_listener(pool: PgPool) {
    let app = spawn_ingress(pool).await;
    let get = |url: String| {
        let client = app.client.clone();
        async move {
            let resp = client.get(url).send().await.expect("send");
            (resp.status().as_u16(), resp.text().await.expect("text"))
        }
    };
    // The public port, which Twilio reaches, says it is alive and no more.
    assert_eq!(get(format!("{}/health", app.base)).await.0, 200);
    assert_eq!(get(format!("{}/health/ready", app.base)).await.0, 404);
    assert_eq!(get(format!("{}/metrics", app.base)).await.0, 404);
    // Ready once its NATS connection is up.
    let ready_url = format!("{}/health/ready", app.ops);
    assert!(
        shared::testing::process::wait_for_status(&ready_url, 200, Duration::from_secs(10)).await
    );
    let (status, ready) = get(ready_url).await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("\"postgres\""), "{ready}");
    let (status, metrics) = get(format!("{}/metrics", app.ops)).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    // Webhooks are not served on the ops port.
    let resp = app
        .client
        .post(format!("{}{INBOUND}", app.ops))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("CallSid=CA00000000000000000000000000000077")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 404);
}
