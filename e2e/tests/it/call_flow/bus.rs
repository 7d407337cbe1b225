//! The bus with least privilege (`deploy/nats/nats.conf` on a private
//! nats-server): the call flow runs with each service as its own NATS user;
//! the runtime consumes handoffs and publishes its events as `runtime`, and
//! can do nothing more: publishing `calls.*` or `automation.*`, or reading
//! `automation.>`, is refused; a client without credentials is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use chrono::Utc;
use futures::StreamExt;
use shared::calls::{HandoffRequested, RuntimeEvent};
use shared::testing::nats_server::SecuredNats;
use sqlx::PgPool;
use uuid::Uuid;

use super::world::*;

/// Connects as `user`, recording every error the server reports.
async fn connect_as(
    bus: &SecuredNats,
    user: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = shared::nats::connect_options(&bus.args(user), user)
        .await
        .expect("options")
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    seen.lock()
                        .expect("lock")
                        .push(err.to_string().to_lowercase());
                }
            }
        })
        .connect(bus.url())
        .await
        .expect("connect");
    (client, errors)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn each_service_is_its_own_nats_user_and_the_runtime_gets_no_more(pool: PgPool) {
    let bus = SecuredNats::start().await;
    let (dispatch_client, _) = connect_as(&bus, "dispatch-worker").await;
    let w = world_on(pool, bus.args("webhook-ingress"), dispatch_client).await;
    let dispatch_args = bus.args("dispatch-worker");
    w.spawn_worker(move |config| config.nats = dispatch_args)
        .await;
    let seeded = seed_number(&w.pool, "+14155550990").await;

    // An inbound call goes through the ingress and the dispatch-worker.
    let sid = "CA00000000000000000000000000000990";
    let (status, _) = w
        .post_signed(
            "/twilio/webhook/inbound",
            &inbound_params(sid, &seeded.e164),
        )
        .await;
    assert_eq!(status, 200);

    // The runtime takes the handoff through its own durable consumer.
    let (runtime, refused) = connect_as(&bus, "runtime").await;
    let js = jetstream::new(runtime.clone());
    let consumer = js
        .get_stream("RUNTIME_HANDOFFS")
        .await
        .expect("the runtime may read the handoff stream's info")
        .create_consumer(pull::Config {
            durable_name: Some("runtime".into()),
            ..Default::default()
        })
        .await
        .expect("the runtime may create its consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(15))
        .messages()
        .await
        .expect("fetch");
    let message = messages
        .next()
        .await
        .expect("a handoff")
        .expect("a message");
    let handoff: HandoffRequested = serde_json::from_slice(&message.payload).expect("handoff");
    assert_eq!(handoff.call_sid, sid);
    message.ack().await.expect("the runtime may ack");

    // Its events reach the transcript.
    let event = RuntimeEvent {
        event_id: Uuid::now_v7(),
        kind: "transcript.segment".into(),
        call_id: handoff.call_id,
        tenant_id: handoff.tenant_id,
        occurred_at: Utc::now(),
        data: serde_json::json!({"speaker": "caller", "text": "hello", "start_ms": 0, "end_ms": 500}),
    };
    js.publish(
        w.subjects
            .runtime_events(handoff.tenant_id, handoff.call_id),
        serde_json::to_vec(&event).expect("json").into(),
    )
    .await
    .expect("the runtime may publish its events")
    .await
    .expect("acked");
    assert!(
        eventually(Duration::from_secs(15), || async {
            w.scalar("SELECT count(*) FROM transcript_segments").await == 1
        })
        .await,
        "the runtime's transcript segment was stored"
    );

    // Nothing more: a forged call event, a forged tool execution, and
    // listening to tool executions (integration secrets travel there).
    // The last stored sequence, not the count: the dispatch-worker's acks
    // remove messages meanwhile.
    let calls_before = w.stream_last_sequence(&w.subjects.calls_stream()).await;
    runtime
        .publish(w.subjects.calls_inbound(handoff.tenant_id), "{}".into())
        .await
        .expect("sent");
    runtime
        .publish(w.subjects.automation_tool_execute(), "{}".into())
        .await
        .expect("sent");
    let _listener = runtime
        .subscribe(w.subjects.automation_tool_execute())
        .await
        .expect("sent");
    runtime.flush().await.expect("flush");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let refused = refused.lock().expect("lock").clone();
            let violation = |what: &str, subject: &str| {
                refused.iter().any(|e| {
                    e.contains("permissions violation") && e.contains(what) && e.contains(subject)
                })
            };
            violation("publish", "calls.inbound.")
                && violation("publish", "automation.tool.execute")
                && violation("subscription", "automation.tool.execute")
        })
        .await,
        "the server refused the runtime: {:?}",
        refused.lock().expect("lock")
    );
    assert_eq!(
        w.stream_last_sequence(&w.subjects.calls_stream()).await,
        calls_before,
        "no forged call event reached the stream"
    );

    // No credentials, or a wrong password: refused at connect.
    assert!(async_nats::connect(bus.url()).await.is_err());
    let mut wrong = bus.args("runtime");
    wrong.nats_password = Some("not-the-password".into());
    let options = shared::nats::connect_options(&wrong, "runtime")
        .await
        .expect("options");
    assert!(options.connect(bus.url()).await.is_err());
}
