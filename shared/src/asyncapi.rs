//! The voice runtime's contract on NATS as an AsyncAPI 3.0 document, built
//! from the message types themselves ([`HandoffRequested`], [`RuntimeEvent`]
//! and the typed `data` of each event), so the document cannot drift from
//! what the services send and parse. The api serves it at `/asyncapi.json`;
//! `docs/asyncapi.json` is a copy a test keeps equal to it.
//!
//! The HTTP half of the contract (the claim, the tool catalog and tool
//! executions) is in the api's OpenAPI document.

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::calls::{
    CallEnded, HandoffRequested, RuntimeError, RuntimeEvent, TranscriptSegment, runtime_event_type,
};

/// One kind of event a runtime publishes: the message name in the document,
/// its `type`, its `data` schema and an example `data`.
struct EventMessage {
    name: &'static str,
    kind: &'static str,
    data_schema: &'static str,
    summary: &'static str,
    example: Value,
}

fn event_messages() -> Vec<EventMessage> {
    vec![
        EventMessage {
            name: "transcriptSegment",
            kind: runtime_event_type::TRANSCRIPT_SEGMENT,
            data_schema: "TranscriptSegment",
            summary: "One utterance of the caller or the agent; stored in the call's transcript.",
            example: json!(TranscriptSegment {
                speaker: "agent".into(),
                text: "Thanks for calling. How can I help?".into(),
                start_ms: 0,
                end_ms: 2400,
            }),
        },
        EventMessage {
            name: "callEnded",
            kind: runtime_event_type::CALL_ENDED,
            data_schema: "CallEnded",
            summary: "The runtime's conversation is over; the call's timeline shows it. \
                      The call ends with Twilio's status callback, not with this event.",
            example: json!(CallEnded {
                reason: "conversation_complete".into(),
            }),
        },
        EventMessage {
            name: "runtimeError",
            kind: runtime_event_type::RUNTIME_ERROR,
            data_schema: "RuntimeError",
            summary: "Something went wrong in the runtime; shown on the call's timeline.",
            example: json!(RuntimeError {
                message: "speech-to-text provider timed out".into(),
            }),
        },
    ]
}

/// `name` -> JSON Schema of every type the document refers to.
fn schemas() -> serde_json::Map<String, Value> {
    fn entry<T: ToSchema>() -> (String, Value) {
        let schema = serde_json::to_value(T::schema()).unwrap_or(Value::Null);
        (T::name().into_owned(), schema)
    }
    [
        entry::<HandoffRequested>(),
        entry::<RuntimeEvent>(),
        entry::<TranscriptSegment>(),
        entry::<CallEnded>(),
        entry::<RuntimeError>(),
    ]
    .into_iter()
    .collect()
}

fn example_ids() -> (Uuid, Uuid) {
    (
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002),
    )
}

fn handoff_example() -> Value {
    let (tenant_id, call_id) = example_ids();
    json!(HandoffRequested {
        dispatch_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003),
        call_id,
        call_sid: "CA0123456789abcdef0123456789abcdef".into(),
        tenant_id,
        agent_id: Some(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0004)),
        agent_version_id: Some(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0005)),
        agent_version: Some(3),
        from: "+14155550100".into(),
        to: "+15005550006".into(),
        expires_at: Utc
            .with_ymd_and_hms(2026, 1, 1, 12, 0, 30)
            .single()
            .unwrap_or_default(),
    })
}

fn event_example(kind: &str, data: Value) -> Value {
    let (tenant_id, call_id) = example_ids();
    json!(RuntimeEvent {
        event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0006),
        kind: kind.into(),
        call_id,
        tenant_id,
        occurred_at: Utc
            .with_ymd_and_hms(2026, 1, 1, 12, 0, 5)
            .single()
            .unwrap_or_default(),
        data,
    })
}

/// The message header every message carries: JetStream's de-duplication key.
fn msg_id_header(description: &str) -> Value {
    json!({
        "type": "object",
        "properties": {"Nats-Msg-Id": {"type": "string", "description": description}},
        "required": ["Nats-Msg-Id"],
    })
}

/// The AsyncAPI 3.0 document of the subjects a voice runtime consumes and
/// publishes.
pub fn document() -> Value {
    let mut messages = serde_json::Map::new();
    messages.insert(
        "handoffRequested".into(),
        json!({
            "name": "HandoffRequested",
            "title": "A call waiting for a voice runtime",
            "summary": "Claim it by dispatch_id through the api before it expires; \
                        the join token comes only with the claim.",
            "contentType": "application/json",
            "headers": msg_id_header("The outbox event's id: a redelivery or a republish carries the same one."),
            "payload": {"$ref": "#/components/schemas/HandoffRequested"},
            "examples": [{"name": "handoff", "payload": handoff_example()}],
        }),
    );
    let mut event_refs = serde_json::Map::new();
    let mut event_op_refs = Vec::new();
    for m in event_messages() {
        messages.insert(
            m.name.into(),
            json!({
                "name": m.kind,
                "title": m.kind,
                "summary": m.summary,
                "contentType": "application/json",
                "headers": msg_id_header("The event_id; JetStream drops a duplicate publish within its window."),
                "payload": {
                    "allOf": [
                        {"$ref": "#/components/schemas/RuntimeEvent"},
                        {
                            "type": "object",
                            "properties": {
                                "type": {"const": m.kind},
                                "data": {"$ref": format!("#/components/schemas/{}", m.data_schema)},
                            },
                        },
                    ],
                },
                "examples": [{"name": m.name, "payload": event_example(m.kind, m.example)}],
            }),
        );
        event_refs.insert(
            m.name.into(),
            json!({"$ref": format!("#/components/messages/{}", m.name)}),
        );
        event_op_refs
            .push(json!({"$ref": format!("#/channels/runtimeEvents/messages/{}", m.name)}));
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Voice control plane: the voice runtime's NATS contract",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "What a voice runtime consumes from and publishes to NATS. \
                Addresses are a production deployment's; a deployment with \
                NATS_SUBJECT_PREFIX=p uses `p.<address>` and streams `p_<STREAM>`. \
                The runtime connects as its own NATS user (deploy/nats/nats.conf, user \
                `runtime`), which may only consume RUNTIME_HANDOFFS through its own durable \
                consumer and publish runtime.events.>. The HTTP half (claim, tool catalog, \
                tool executions) is in the api's /openapi.json. examples/runtime is a \
                runtime that follows this document; docs/runtime.md walks through it.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "NATS with JetStream; scripts/dev-up.sh starts one on 127.0.0.1:4322 with the deployment's users.",
            },
        },
        "channels": {
            "handoffRequested": {
                "address": "runtime.handoff_requested.{tenant_id}",
                "title": "Handoffs",
                "description": "Stream RUNTIME_HANDOFFS (file storage, messages kept an hour). \
                    Consume it through a durable pull consumer of the runtime's own, with \
                    explicit acks, filtered to the tenants the runtime serves. Ack once the claim has an answer (200, 409 \
                    or 410); leave a message unacked (or nak it) when the api could not be \
                    reached, so it is delivered again. A handoff may arrive twice: the claim \
                    decides, exactly one claim succeeds.",
                "parameters": {"tenant_id": {"description": "The tenant's id (UUID)."}},
                "messages": {"handoffRequested": {"$ref": "#/components/messages/handoffRequested"}},
            },
            "runtimeEvents": {
                "address": "runtime.events.{tenant_id}.{call_id}",
                "title": "Runtime events",
                "description": "Stream RUNTIME_EVENTS. Publish with JetStream (wait for the \
                    stream's ack) and Nats-Msg-Id = event_id; the dispatch-worker stores each \
                    event once, by event_id, on the call's timeline and transcript. Events \
                    whose data break the schema are dropped and counted, not retried.",
                "parameters": {
                    "tenant_id": {"description": "The call's tenant (UUID); must match the payload."},
                    "call_id": {"description": "The call (UUID); must match the payload."},
                },
                "messages": Value::Object(event_refs),
            },
        },
        "operations": {
            "receiveHandoff": {
                "action": "receive",
                "channel": {"$ref": "#/channels/handoffRequested"},
                "summary": "Take a call: claim the dispatch, then join the media stream with the join token.",
                "messages": [{"$ref": "#/channels/handoffRequested/messages/handoffRequested"}],
            },
            "sendRuntimeEvent": {
                "action": "send",
                "channel": {"$ref": "#/channels/runtimeEvents"},
                "summary": "Report the conversation: transcript segments, its end, errors.",
                "messages": event_op_refs,
            },
        },
        "components": {
            "messages": Value::Object(messages),
            "schemas": Value::Object(schemas()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped copy, for readers without a running api.
    const SHIPPED: &str = include_str!("../../docs/asyncapi.json");

    #[test]
    fn the_shipped_document_is_the_generated_one() {
        let generated = serde_json::to_string_pretty(&document()).expect("json") + "\n";
        if std::env::var_os("UPDATE_ASYNCAPI").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.json"),
                &generated,
            )
            .expect("write docs/asyncapi.json");
            return;
        }
        assert!(
            SHIPPED == generated,
            "docs/asyncapi.json differs from shared::asyncapi::document(); \
             regenerate it: UPDATE_ASYNCAPI=1 cargo test -p shared asyncapi"
        );
    }

    /// Every message's example validates against its payload schema, and the
    /// consumer's own parser accepts each event example: the schemas say
    /// what the services really take.
    #[test]
    fn examples_match_their_schemas_and_the_consumers_parser() {
        let doc = document();
        let messages = doc["components"]["messages"].as_object().expect("messages");
        assert_eq!(messages.len(), 4);
        for (name, message) in messages {
            // Resolve `#/components/...` against the document itself.
            let mut root = doc.clone();
            root["$ref"] = json!(format!("#/components/messages/{name}/payload"));
            let validator = jsonschema::validator_for(&root).expect("schema compiles");
            let example = &message["examples"][0]["payload"];
            let errors: Vec<String> = validator
                .iter_errors(example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            if name != "handoffRequested" {
                let event: RuntimeEvent = serde_json::from_value(example.clone()).expect("event");
                event.parse_data().expect("the dispatch-worker accepts it");
            }
        }
    }

    /// The schemas refuse what the consumer refuses, so a runtime that
    /// validates against them catches its mistakes before publishing.
    #[test]
    fn schemas_refuse_a_wrong_type_or_a_missing_field() {
        let doc = document();
        let validator_for = |message: &str| {
            let mut root = doc.clone();
            root["$ref"] = json!(format!("#/components/messages/{message}/payload"));
            jsonschema::validator_for(&root).expect("schema compiles")
        };
        let segment = validator_for("transcriptSegment");
        let mut wrong_type = event_example(
            runtime_event_type::CALL_ENDED,
            json!({"speaker": "agent", "text": "hi", "start_ms": 0, "end_ms": 1}),
        );
        assert!(!segment.is_valid(&wrong_type));
        wrong_type["type"] = json!(runtime_event_type::TRANSCRIPT_SEGMENT);
        assert!(segment.is_valid(&wrong_type));
        wrong_type["data"]["speaker"] = json!("robot");
        assert!(!segment.is_valid(&wrong_type));
        let mut handoff = handoff_example();
        assert!(validator_for("handoffRequested").is_valid(&handoff));
        handoff
            .as_object_mut()
            .expect("object")
            .remove("dispatch_id");
        assert!(!validator_for("handoffRequested").is_valid(&handoff));
    }
}
