//! The call lifecycle with the worker in-process.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use chrono::Utc;
use shared::calls::RuntimeEvent;
use sqlx::PgPool;
use uuid::Uuid;

use super::world::*;

const INBOUND: &str = "/twilio/webhook/inbound";
const STATUS: &str = "/twilio/webhook/status";
const RECORDING: &str = "/twilio/webhook/recording";

async fn call_id_of(w: &World, sid: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM call_sessions WHERE call_sid = $1")
        .bind(sid)
        .fetch_one(&w.pool)
        .await
        .expect("session exists once the webhook is answered")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn status_callbacks_never_move_a_call_backwards(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|_| {}).await;
    let seeded = seed_number(&w.pool, "+14155550301").await;
    let sid = "CA00000000000000000000000000000301";
    assert_eq!(
        w.post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
            .await
            .0,
        200
    );
    let status = |s: &str| {
        params(&[
            ("CallSid", sid),
            ("CallStatus", s),
            ("CallDuration", "42"),
            ("To", &seeded.e164),
        ])
    };
    assert_eq!(w.post_signed(STATUS, &status("completed")).await.0, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.scalar("SELECT count(*) FROM call_sessions WHERE status = 'completed'")
                .await
                == 1
        })
        .await
    );
    // A late in-progress arrives after completed.
    assert_eq!(w.post_signed(STATUS, &status("in-progress")).await.0, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.scalar("SELECT count(*) FROM call_events WHERE type = 'call.status' AND processed_at IS NOT NULL")
                .await
                == 2
        })
        .await
    );
    type Times = Option<chrono::DateTime<Utc>>;
    let (state, started, answered, ended, duration): (String, chrono::DateTime<Utc>, Times, Times, Option<i32>) = sqlx::query_as(
        "SELECT status, started_at, answered_at, ended_at, duration_seconds FROM call_sessions WHERE call_sid = $1",
    )
    .bind(sid)
    .fetch_one(&w.pool)
    .await
    .expect("session");
    assert_eq!(state, "completed");
    assert!(answered.is_some() && ended.is_some());
    assert_eq!(duration, Some(42));
    // CallDuration (42 s) is longer than the call lasted here: the answer
    // time derived from it stops at the ring, never before.
    assert_eq!(answered, Some(started));
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn recordings_are_upserted_by_sid(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|_| {}).await;
    let seeded = seed_number(&w.pool, "+14155550302").await;
    let sid = "CA00000000000000000000000000000302";
    assert_eq!(
        w.post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
            .await
            .0,
        200
    );
    let rec = |status: &str, duration: &str| {
        params(&[
            ("CallSid", sid),
            ("RecordingSid", "RE0000000000000000000000000000302"),
            ("RecordingUrl", "https://api.twilio.com/rec/RE302"),
            ("RecordingStatus", status),
            ("RecordingDuration", duration),
            ("RecordingChannels", "2"),
        ])
    };
    assert_eq!(
        w.post_signed(RECORDING, &rec("completed", "40")).await.0,
        200
    );
    assert_eq!(
        w.post_signed(RECORDING, &rec("in-progress", "")).await.0,
        200
    );
    assert_eq!(
        w.post_signed(RECORDING, &rec("completed", "40")).await.0,
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.scalar("SELECT count(*) FROM call_events WHERE type = 'call.recording' AND processed_at IS NOT NULL")
                .await
                == 2
        })
        .await
    );
    let (count, status, duration, channels): (i64, String, Option<i32>, Option<i32>) =
        sqlx::query_as(
            "SELECT count(*) OVER (), status, duration_seconds, channels FROM recordings",
        )
        .fetch_one(&w.pool)
        .await
        .expect("recording");
    assert_eq!(count, 1);
    assert_eq!(status, "completed");
    assert_eq!(duration, Some(40));
    assert_eq!(channels, Some(2));
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn runtime_events_reach_the_transcript_once(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|_| {}).await;
    let seeded = seed_number(&w.pool, "+14155550303").await;
    let sid = "CA00000000000000000000000000000303";
    assert_eq!(
        w.post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
            .await
            .0,
        200
    );
    let call_id = call_id_of(&w, sid).await;
    let js = async_nats::jetstream::new(w.nats.clone());
    let subject = w.subjects.runtime_events(seeded.tenant_id, call_id);
    let segment = RuntimeEvent {
        event_id: Uuid::now_v7(),
        kind: "transcript.segment".into(),
        call_id,
        tenant_id: seeded.tenant_id,
        occurred_at: Utc::now(),
        data: serde_json::json!({"speaker": "caller", "text": "hello", "start_ms": 0, "end_ms": 900}),
    };
    let ended = RuntimeEvent {
        event_id: Uuid::now_v7(),
        kind: "call.ended".into(),
        data: serde_json::json!({"reason": "caller hung up"}),
        ..segment.clone()
    };
    let body = |e: &RuntimeEvent| serde_json::to_vec(e).expect("json");
    // The same event twice (as a runtime retry would, with new message ids),
    // a malformed one, and one whose subject names another call.
    for (subject, payload) in [
        (subject.clone(), body(&segment)),
        (subject.clone(), body(&segment)),
        (subject.clone(), b"{not json".to_vec()),
        (
            w.subjects.runtime_events(seeded.tenant_id, Uuid::now_v7()),
            body(&segment),
        ),
        (subject.clone(), body(&ended)),
    ] {
        js.send_publish(
            subject,
            PublishMessage::build()
                .payload(payload.into())
                .message_id(Uuid::new_v4().to_string()),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.stream_messages(&w.subjects.runtime_events_stream()).await == 0
        })
        .await
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM transcript_segments").await,
        1
    );
    assert_eq!(
        w.scalar(
            "SELECT count(*) FROM call_events WHERE type IN ('transcript.segment', 'call.ended')"
        )
        .await,
        2
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM call_sessions WHERE ended_at IS NOT NULL")
            .await,
        1
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn relay_publishes_what_the_ingress_could_not(pool: PgPool) {
    // The ingress cannot reach NATS at all.
    let w = world_with_ingress_nats(pool, "nats://127.0.0.1:1").await;
    let seeded = seed_number(&w.pool, "+14155550304").await;
    let sid = "CA00000000000000000000000000000304";
    assert_eq!(
        w.post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
            .await
            .0,
        200
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM call_events WHERE published_at IS NULL")
            .await,
        1
    );
    w.spawn_worker(|_| {}).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            w.scalar("SELECT count(*) FROM runtime_dispatches").await == 1
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.stream_messages(&w.subjects.runtime_handoffs_stream())
                .await
                == 1
        })
        .await
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn relay_leases_its_rows_instead_of_locking_them(pool: PgPool) {
    use dispatch_worker::relay::{Due, Relay};
    let w = world_with_ingress_nats(pool, "nats://127.0.0.1:1").await;
    let seeded = seed_number(&w.pool, "+14155550307").await;
    let sid = "CA00000000000000000000000000000307";
    assert_eq!(
        w.post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
            .await
            .0,
        200
    );
    sqlx::query("UPDATE call_events SET created_at = now() - interval '1 hour'")
        .execute(&w.pool)
        .await
        .expect("age");
    let relay = Relay {
        pool: w.pool.clone(),
        js: async_nats::jetstream::new(w.nats.clone()),
        subjects: w.subjects.clone(),
        publish_after: Duration::from_secs(1),
        republish_after: Duration::from_secs(30),
        interval: Duration::from_secs(1),
        batch: 10,
    };
    let taken = relay.take(Due::Unpublished).await.expect("take");
    assert_eq!(taken.len(), 1);
    let event_id = taken[0].row.id;
    // Taken, yet not locked: the dispatch-worker can write the row at once.
    let mut tx = w.pool.begin().await.expect("begin");
    sqlx::query("SELECT id FROM call_events WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(event_id)
        .fetch_one(&mut *tx)
        .await
        .expect("the relay holds no row lock");
    tx.rollback().await.expect("rollback");
    // A second relay instance skips the leased row.
    assert!(relay.take(Due::Unpublished).await.expect("take").is_empty());
    assert_eq!(relay.round(Due::Unpublished).await.expect("round"), 0);
    // A relay that died mid-round: once its lease ends, the row is due again.
    sqlx::query("UPDATE call_events SET relay_lease_until = now() - interval '1 second'")
        .execute(&w.pool)
        .await
        .expect("expire lease");
    assert_eq!(relay.round(Due::Unpublished).await.expect("round"), 1);
    assert_eq!(
        w.scalar(
            "SELECT count(*) FROM call_events
             WHERE published_at IS NOT NULL AND relay_lease_until IS NULL AND publish_attempts = 1",
        )
        .await,
        1
    );
    assert_eq!(w.stream_messages(&w.subjects.calls_stream()).await, 1);
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn handoff_publish_records_are_written_together_and_none_is_lost(pool: PgPool) {
    use dispatch_worker::publish_records::PublishRecorder;
    use shared::calls::PublishOutcome;
    use tokio_util::sync::CancellationToken;
    // Events nobody publishes: the ingress cannot reach NATS, no worker runs.
    let w = world_with_ingress_nats(pool, "nats://127.0.0.1:1").await;
    let seeded = seed_number(&w.pool, "+14155550309").await;
    for n in 1..=4 {
        let sid = format!("CA{:032}", 30_900 + n);
        assert_eq!(
            w.post_signed(INBOUND, &inbound_params(&sid, &seeded.e164))
                .await
                .0,
            200
        );
    }
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM call_events ORDER BY created_at, id")
        .fetch_all(&w.pool)
        .await
        .expect("events");
    assert_eq!(ids.len(), 4);
    let state = |id: Uuid| {
        let pool = w.pool.clone();
        async move {
            sqlx::query_as::<_, (bool, i32)>(
                "SELECT published_at IS NOT NULL, publish_attempts FROM call_events WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("event")
        }
    };
    let acked = |ids: Vec<Uuid>| PublishOutcome {
        acked: ids,
        failed: Vec::new(),
    };

    // A writer that would wait an hour writes what was queued when it stops:
    // acked events published, failed ones only counted.
    let (recorder, writer) = PublishRecorder::start(w.pool.clone(), Duration::from_secs(3600));
    let stop = CancellationToken::new();
    let writing = tokio::spawn(writer.run(stop.clone()));
    recorder.record(acked(vec![ids[0]])).await;
    recorder
        .record(PublishOutcome {
            acked: Vec::new(),
            failed: vec![ids[1]],
        })
        .await;
    stop.cancel();
    writing.await.expect("writer");
    assert_eq!(state(ids[0]).await, (true, 1));
    assert_eq!(state(ids[1]).await, (false, 1));

    // Enough marks are written without waiting for the deadline.
    let (recorder, writer) = PublishRecorder::start(w.pool.clone(), Duration::from_secs(3600));
    let stop = CancellationToken::new();
    let writing = tokio::spawn(writer.run(stop.clone()));
    let mut many: Vec<Uuid> = (0..2_000).map(|_| Uuid::new_v4()).collect();
    many.push(ids[2]);
    recorder.record(acked(many)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            state(ids[2]).await == (true, 1)
        })
        .await
    );

    // And a few marks at their deadline.
    let (recorder, writer) = PublishRecorder::start(w.pool.clone(), Duration::from_millis(20));
    let _short = tokio::spawn(writer.run(CancellationToken::new()));
    recorder.record(acked(vec![ids[3]])).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            state(ids[3]).await == (true, 1)
        })
        .await
    );
    stop.cancel();
    writing.await.expect("writer");
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_message_naming_another_tenants_event_changes_nothing(pool: PgPool) {
    // The ingress stores but cannot publish; the worker's relay waits long,
    // so only the messages this test publishes reach the worker.
    let w = world_with_ingress_nats(pool, "nats://127.0.0.1:1").await;
    let victim = seed_number(&w.pool, "+14155550308").await;
    let forger = seed_number(&w.pool, "+14155550309").await;
    for (sid, number) in [
        ("CA00000000000000000000000000000308", &victim.e164),
        ("CA00000000000000000000000000000309", &forger.e164),
    ] {
        assert_eq!(
            w.post_signed(INBOUND, &inbound_params(sid, number)).await.0,
            200
        );
    }
    let event_of = |tenant_id: uuid::Uuid| {
        let pool = w.pool.clone();
        async move {
            sqlx::query_as::<_, shared::calls::OutboxRow>(
                "SELECT id, tenant_id, call_id, type, occurred_at, payload, trace_id
                 FROM call_events WHERE tenant_id = $1",
            )
            .bind(tenant_id)
            .fetch_one(&pool)
            .await
            .expect("event")
        }
    };
    let victim_event = event_of(victim.tenant_id).await;
    let forger_event = event_of(forger.tenant_id).await;
    w.spawn_worker(|c| {
        c.relay_publish_after = Duration::from_secs(3600);
        c.parallel_batches = 1;
    })
    .await;
    let js = async_nats::jetstream::new(w.nats.clone());
    // On the forger's subject, in the forger's name, the victim's event id;
    // then the forger's genuine event.
    let forged = shared::calls::OutboxRow {
        id: victim_event.id,
        ..forger_event.clone()
    };
    for (row, msg_id) in [(&forged, "forged"), (&forger_event, "genuine")] {
        shared::calls::publish_outbox_row(&js, &w.subjects, row, msg_id, Duration::from_secs(5))
            .await
            .expect("publish");
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            w.scalar("SELECT count(*) FROM runtime_dispatches").await >= 1
        })
        .await
    );
    let dispatched: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT tenant_id FROM runtime_dispatches")
            .fetch_all(&w.pool)
            .await
            .expect("dispatches");
    assert_eq!(dispatched, [forger.tenant_id]);
    assert_eq!(
        w.scalar("SELECT count(*) FROM call_events WHERE processed_at IS NOT NULL AND type = 'call.inbound'")
            .await,
        1
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn unclaimed_dispatches_expire_and_drop_their_token(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|c| {
        c.dispatch_ttl_seconds = 1;
        c.dispatch_expiry_interval = Duration::from_millis(200);
    })
    .await;
    let seeded = seed_number(&w.pool, "+14155550305").await;
    let sid = "CA00000000000000000000000000000305";
    assert_eq!(
        w.post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
            .await
            .0,
        200
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            w.scalar(
                "SELECT count(*) FROM runtime_dispatches WHERE status = 'expired' AND join_token_ciphertext IS NULL",
            )
            .await
                == 1
        })
        .await
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn relay_republishes_a_published_event_that_was_never_processed(pool: PgPool) {
    let w = world(pool).await;
    let seeded = seed_number(&w.pool, "+14155550306").await;
    let sid = "CA00000000000000000000000000000306";
    assert_eq!(
        w.post_signed(INBOUND, &inbound_params(sid, &seeded.e164))
            .await
            .0,
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.stream_messages(&w.subjects.calls_stream()).await == 1
        })
        .await
    );
    // JetStream loses the acknowledged message (as a crash before its
    // fsync would), and the publish happened a while ago.
    let js = async_nats::jetstream::new(w.nats.clone());
    js.get_stream(w.subjects.calls_stream())
        .await
        .expect("stream")
        .purge()
        .await
        .expect("purge");
    sqlx::query("UPDATE call_events SET published_at = now() - interval '1 hour'")
        .execute(&w.pool)
        .await
        .expect("age");
    w.spawn_worker(|c| c.relay_republish_after = Duration::from_millis(500))
        .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            w.scalar("SELECT count(*) FROM runtime_dispatches").await == 1
                && w.scalar("SELECT count(*) FROM call_events WHERE type = 'call.inbound' AND processed_at IS NOT NULL")
                    .await
                    == 1
        })
        .await
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_worker_keeps_the_kpi_rollups_computed(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|c| c.kpi_rollup_interval = Duration::from_millis(200))
        .await;
    let seeded = seed_number(&w.pool, "+14155550307").await;
    // A call of yesterday written straight into the table while the worker
    // runs (an import): its hour is marked, then computed.
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, status, started_at, answered_at,
             ended_at, duration_seconds)
         VALUES (gen_random_uuid(), $1, 'CA00000000000000000000000000000307', 'completed',
                 now() - interval '1 day', now() - interval '1 day' + interval '2 seconds',
                 now() - interval '1 day' + interval '44 seconds', 42)",
    )
    .bind(seeded.tenant_id)
    .execute(&w.pool)
    .await
    .expect("import a call");
    let rolled_up = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM kpi_counts
             WHERE tenant_id = $1 AND agent_key = '00000000-0000-0000-0000-000000000000'
               AND grain = 0 AND completed = 1 AND seconds = 42
               AND NOT EXISTS (SELECT 1 FROM kpi_dirty_hours WHERE tenant_id = $1)",
        )
        .bind(seeded.tenant_id)
        .fetch_one(&w.pool)
        .await
        .expect("rollups")
            == 1
    };
    assert!(eventually(Duration::from_secs(10), rolled_up).await);
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_worker_purges_calls_past_their_tenants_retention(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|c| c.retention_purge_interval = Duration::from_millis(200))
        .await;
    let seeded = seed_number(&w.pool, "+14155550308").await;
    sqlx::query("UPDATE tenants SET retention_days = 30 WHERE id = $1")
        .bind(seeded.tenant_id)
        .execute(&w.pool)
        .await
        .expect("retention");
    let call = |sid: &'static str, age: &'static str| {
        let pool = w.pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "INSERT INTO call_sessions (id, tenant_id, call_sid, status, started_at)
                 VALUES (gen_random_uuid(), $1, $2, 'completed', now() - $3::interval) RETURNING id",
            )
            .bind(seeded.tenant_id)
            .bind(sid)
            .bind(age)
            .fetch_one(&pool)
            .await
            .expect("call")
        }
    };
    let expired = call("CA00000000000000000000000000000308", "31 days").await;
    let kept = call("CA00000000000000000000000000000309", "29 days").await;
    let gone = || async {
        !sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM call_sessions WHERE id = $1)")
            .bind(expired)
            .fetch_one(&w.pool)
            .await
            .expect("exists")
    };
    assert!(eventually(Duration::from_secs(10), gone).await);
    let remaining: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM call_sessions")
        .fetch_all(&w.pool)
        .await
        .expect("calls");
    assert_eq!(remaining, [kept]);
    w.delete_streams().await;
}

/// The worker's call-event batches wait `DISPATCH_BATCH_LINGER` for
/// company: a batch of three holds its first message until the other two
/// arrive, then is handled (and acked) as one.
#[tokio::test]
async fn a_lingering_batch_takes_the_messages_that_follow_its_first() {
    use async_nats::jetstream::{self, consumer::PullConsumer, stream};
    use shared::consumer::{Batching, ConsumerSpec, Outcome};
    use tokio_util::sync::CancellationToken;
    let js = jetstream::new(async_nats::connect(NATS_URL).await.expect("nats"));
    let prefix = unique_prefix();
    let name = format!("{prefix}_LINGER");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.linger.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("stream");
    let spec = ConsumerSpec {
        stream: name.clone(),
        durable: "linger",
        filter_subject: format!("{prefix}.linger.>"),
        ack_wait: Duration::from_secs(30),
        owned_stream: None,
    };
    let consumer = spec.ensure(&js).await.expect("consumer");
    // Messages delivered and not yet acked, as NATS counts them.
    let ack_pending = |consumer: &PullConsumer| {
        let consumer = consumer.clone();
        async move {
            consumer
                .get_info()
                .await
                .map(|info| info.num_ack_pending)
                .ok()
        }
    };
    let (batches, mut handled) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let stop = CancellationToken::new();
    // Three to a batch, waiting as long as it takes for them.
    let running = tokio::spawn(shared::consumer::run(
        "linger",
        js.clone(),
        spec,
        Batching {
            size: 3,
            parallel: 1,
            linger: Duration::from_secs(3600),
        },
        stop.clone(),
        move |batch: Vec<jetstream::Message>| {
            let batches = batches.clone();
            async move {
                let _ = batches.send(batch.len());
                batch.into_iter().map(|m| (m, Outcome::Done)).collect()
            }
        },
    ));
    let publish = |n: u8| {
        let js = js.clone();
        let subject = format!("{prefix}.linger.{n}");
        async move {
            js.publish(subject, vec![n].into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    };
    publish(1).await;
    // Delivered, and held for the messages that follow it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            ack_pending(&consumer).await == Some(1)
        })
        .await
    );
    publish(2).await;
    publish(3).await;
    let first = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("a batch within 10 s");
    assert_eq!(first, Some(3), "the three messages in one batch");
    assert!(
        eventually(Duration::from_secs(10), || async {
            ack_pending(&consumer).await == Some(0)
        })
        .await,
        "acked after the batch"
    );
    stop.cancel();
    running.await.expect("consumer loop");
    js.delete_stream(&name).await.expect("delete stream");
}
