//! Storage modes end to end: the same inbound call and runtime events for
//! three tenants, one per mode, through the ingress and the
//! dispatch-worker; what Postgres holds for each. And a number that stops
//! routing stops at once, not when the ingress's cache expires.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use chrono::Utc;
use serde_json::{Value, json};
use shared::calls::RuntimeEvent;
use sqlx::PgPool;
use uuid::Uuid;

use super::world::*;

const INBOUND: &str = "/twilio/webhook/inbound";
const STATUS: &str = "/twilio/webhook/status";

const SPOKEN: &str = "I'm Jane, jane.doe@example.com, card 4111 1111 1111 1111, \
                      call me on +1 415 555 0199; order 4111 1111 1111 1112";

struct Stored {
    from: String,
    to: String,
    mode: String,
    inbound_payload: Value,
    status_payload: Value,
    segments: Vec<(String, bool)>,
    segment_payload: Option<Value>,
    error_payload: Option<Value>,
}

async fn stored(w: &World, call_id: Uuid) -> Stored {
    let (from, to, mode): (String, String, String) = sqlx::query_as(
        "SELECT from_number, to_number, data_storage FROM call_sessions WHERE id = $1",
    )
    .bind(call_id)
    .fetch_one(&w.pool)
    .await
    .expect("call");
    let payload = |kind: &'static str| {
        let pool = w.pool.clone();
        async move {
            sqlx::query_scalar::<_, Value>(
                "SELECT payload FROM call_events WHERE call_id = $1 AND type = $2",
            )
            .bind(call_id)
            .bind(kind)
            .fetch_optional(&pool)
            .await
            .expect("payload")
        }
    };
    let segments: Vec<(String, bool)> =
        sqlx::query_as("SELECT text, redacted FROM transcript_segments WHERE call_id = $1")
            .bind(call_id)
            .fetch_all(&w.pool)
            .await
            .expect("segments");
    Stored {
        from,
        to,
        mode,
        inbound_payload: payload("call.inbound").await.expect("inbound event"),
        status_payload: payload("call.status").await.expect("status event"),
        segments,
        segment_payload: payload("transcript.segment").await,
        error_payload: payload("runtime.error").await,
    }
}

/// One call to `e164` under `mode`: inbound with the caller's name and
/// place, a status callback, a transcript segment and a runtime error
/// full of personal data; waits until the worker has stored them.
async fn call_under(w: &World, e164: &str, sid: &str, mode: &str) -> Uuid {
    let seeded = seed_number(&w.pool, e164).await;
    sqlx::query("UPDATE tenants SET data_storage = $2 WHERE id = $1")
        .bind(seeded.tenant_id)
        .bind(mode)
        .execute(&w.pool)
        .await
        .expect("mode");
    let mut inbound = inbound_params(sid, &seeded.e164);
    inbound.extend(params(&[
        ("CallerName", "JANE DOE"),
        ("FromZip", "94103"),
        ("FromCity", "SAN FRANCISCO"),
    ]));
    assert_eq!(w.post_signed(INBOUND, &inbound).await.0, 200);
    let status = params(&[
        ("CallSid", sid),
        ("CallStatus", "in-progress"),
        ("From", "+14155550100"),
        ("To", &seeded.e164),
        ("CallerName", "JANE DOE"),
    ]);
    assert_eq!(w.post_signed(STATUS, &status).await.0, 200);
    let call_id: Uuid = sqlx::query_scalar("SELECT id FROM call_sessions WHERE call_sid = $1")
        .bind(sid)
        .fetch_one(&w.pool)
        .await
        .expect("call");
    let js = async_nats::jetstream::new(w.nats.clone());
    let segment = RuntimeEvent {
        event_id: Uuid::now_v7(),
        kind: "transcript.segment".into(),
        call_id,
        tenant_id: seeded.tenant_id,
        occurred_at: Utc::now(),
        data: json!({"speaker": "caller", "text": SPOKEN, "start_ms": 0, "end_ms": 900}),
    };
    let error = RuntimeEvent {
        event_id: Uuid::now_v7(),
        kind: "runtime.error".into(),
        data: json!({"message": "could not reach jane.doe@example.com"}),
        ..segment.clone()
    };
    for event in [&segment, &error] {
        js.send_publish(
            w.subjects.runtime_events(seeded.tenant_id, call_id),
            PublishMessage::build()
                .payload(serde_json::to_vec(event).expect("json").into())
                .message_id(event.event_id.to_string()),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    }
    let pool = w.pool.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM call_events WHERE call_id = $1 AND type = 'runtime.error'",
                )
                .bind(call_id)
                .fetch_one(&pool)
                .await
                .expect("count")
                    == 1
            }
        })
        .await,
        "the runtime events of the {mode} call were stored"
    );
    call_id
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn each_storage_mode_keeps_what_it_promises(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|_| {}).await;
    let everything = call_under(
        &w,
        "+14155550351",
        "CA00000000000000000000000000000351",
        "everything",
    )
    .await;
    let except_pii = call_under(
        &w,
        "+14155550352",
        "CA00000000000000000000000000000352",
        "everything_except_pii",
    )
    .await;
    let basic = call_under(
        &w,
        "+14155550353",
        "CA00000000000000000000000000000353",
        "basic_attributes_only",
    )
    .await;

    // everything: as received.
    let s = stored(&w, everything).await;
    assert_eq!(
        (s.from.as_str(), s.to.as_str()),
        ("+14155550100", "+14155550351")
    );
    assert_eq!(s.mode, "everything");
    assert_eq!(s.inbound_payload["CallerName"], "JANE DOE");
    assert_eq!(s.inbound_payload["From"], "+14155550100");
    assert_eq!(s.segments, vec![(SPOKEN.to_owned(), false)]);
    assert_eq!(s.segment_payload.expect("segment event")["text"], SPOKEN);

    // everything_except_pii: numbers masked, party details gone, personal
    // data replaced by placeholders; the Luhn-failing order number stays.
    let s = stored(&w, except_pii).await;
    assert_eq!(
        (s.from.as_str(), s.to.as_str()),
        ("+*******0100", "+*******0352")
    );
    assert_eq!(s.mode, "everything_except_pii");
    for payload in [&s.inbound_payload, &s.status_payload] {
        assert_eq!(payload["From"], "+*******0100", "{payload}");
        assert!(payload.get("CallerName").is_none(), "{payload}");
        assert!(payload.get("FromZip").is_none(), "{payload}");
    }
    assert_eq!(s.inbound_payload["CallStatus"], "ringing");
    let redacted = "I'm Jane, [EMAIL], card [CARD], call me on [PHONE]; \
                    order 4111 1111 1111 1112";
    assert_eq!(s.segments, vec![(redacted.to_owned(), true)]);
    assert_eq!(s.segment_payload.expect("segment event")["text"], redacted);
    assert_eq!(
        s.error_payload.expect("error event"),
        json!({"message": "could not reach [EMAIL]"})
    );
    // Nothing unredacted anywhere in the call's rows.
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT payload::text AS t FROM call_events WHERE call_id = $1
             UNION ALL SELECT text FROM transcript_segments WHERE call_id = $1
             UNION ALL SELECT from_number || to_number FROM call_sessions WHERE id = $1) x
         WHERE t LIKE '%jane.doe%' OR t LIKE '%4111 1111 1111 1111%'
            OR t LIKE '%5550100%' OR t LIKE '%JANE DOE%'",
    )
    .bind(except_pii)
    .fetch_one(&w.pool)
    .await
    .expect("leaks");
    assert_eq!(leaks, 0);

    // basic_attributes_only: no transcript, no payloads, no numbers; the
    // call's status and times are kept.
    let s = stored(&w, basic).await;
    assert_eq!(
        (s.from.as_str(), s.to.as_str()),
        ("+***********", "+***********")
    );
    assert_eq!(s.mode, "basic_attributes_only");
    assert!(s.segments.is_empty());
    assert_eq!(s.segment_payload.expect("segment event"), json!({}));
    assert_eq!(s.error_payload.expect("error event"), json!({}));
    assert!(
        s.inbound_payload.get("From").is_none(),
        "{}",
        s.inbound_payload
    );
    assert!(s.inbound_payload.get("CallerName").is_none());
    assert_eq!(s.status_payload["CallStatus"], "in-progress");
    let pool = w.pool.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, Option<String>>(
                    "SELECT status FROM call_sessions WHERE id = $1 AND answered_at IS NOT NULL",
                )
                .bind(basic)
                .fetch_optional(&pool)
                .await
                .expect("status")
                .flatten()
                    == Some("in-progress".to_owned())
            }
        })
        .await,
        "the basic call still moves through its lifecycle"
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_number_stops_routing_when_the_api_says_so(pool: PgPool) {
    let w = world(pool).await;
    let seeded = seed_number(&w.pool, "+14155550361").await;
    let (s, twiml) = w
        .post_signed(
            INBOUND,
            &inbound_params("CA00000000000000000000000000000361", &seeded.e164),
        )
        .await;
    assert_eq!(s, 200);
    assert!(twiml.contains("<Connect>"), "{twiml}");
    // The route is cached now. The tenant's off-boarding starts, as the
    // api does it, and the api announces it.
    sqlx::query("UPDATE tenants SET offboarding_at = now() WHERE id = $1")
        .bind(seeded.tenant_id)
        .execute(&w.pool)
        .await
        .expect("offboarding");
    w.nats
        .publish(w.subjects.routes_changed(), Vec::<u8>::new().into())
        .await
        .expect("publish");
    w.nats.flush().await.expect("flush");
    // Well within the cache's TTL (5 s), the next call is refused.
    let mut n = 0;
    let refused = eventually(Duration::from_secs(2), || {
        n += 1;
        let sid = format!("CA{n:032}");
        let params = inbound_params(&sid, &seeded.e164);
        let w = &w;
        async move { w.post_signed(INBOUND, &params).await.1.contains("<Reject") }
    })
    .await;
    assert!(refused, "the number still routes");
    w.delete_streams().await;
}
