//! The conversation, scripted where a real runtime would run speech
//! recognition, an LLM and speech synthesis on the call's media stream.
//! What it reports is what a real runtime reports: each utterance as a
//! `transcript.segment`, a tool call through the automation gateway, a
//! `runtime.error` when something fails, and `call.ended` at the end, each
//! published to `runtime.events.<tenant_id>.<call_id>` (see the AsyncAPI
//! document, `/asyncapi.json`).

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use serde::Serialize;
use serde_json::{Map, Value};
use shared::automation::ExecutionStatus;
use shared::calls::{
    CallEnded, HandoffRequested, RuntimeError, RuntimeEvent, TranscriptSegment, runtime_event_type,
};
use shared::nats::Subjects;
use uuid::Uuid;

use crate::platform::{CatalogTool, PlatformApi};

/// How long the stream may take to acknowledge an event.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Speaking time per word, for the segments' `start_ms`/`end_ms`.
const MS_PER_WORD: i32 = 350;

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("cannot publish {kind}: {message}")]
    Publish { kind: &'static str, message: String },
}

/// One claimed call being talked through.
pub struct Conversation<'a> {
    pub js: &'a jetstream::Context,
    pub subjects: &'a Subjects,
    pub api: &'a PlatformApi,
    pub handoff: &'a HandoffRequested,
    /// Pause between turns, so the timeline reads like a conversation.
    pub pause: Duration,
    /// Milliseconds since the conversation started.
    clock_ms: i32,
}

/// What happened, for the runtime's log.
#[derive(Debug, Default)]
pub struct Outcome {
    pub segments: u32,
    pub tool: Option<(String, ExecutionStatus)>,
}

impl<'a> Conversation<'a> {
    pub fn new(
        js: &'a jetstream::Context,
        subjects: &'a Subjects,
        api: &'a PlatformApi,
        handoff: &'a HandoffRequested,
        pause: Duration,
    ) -> Self {
        Self {
            js,
            subjects,
            api,
            handoff,
            pause,
            clock_ms: 0,
        }
    }

    pub async fn run(mut self) -> Result<Outcome, ConversationError> {
        let mut outcome = Outcome::default();
        self.say(
            &mut outcome,
            "agent",
            "Hello, thanks for calling. How can I help you today?",
        )
        .await?;
        self.say(
            &mut outcome,
            "caller",
            "Hi, I'd like to check on my booking, please.",
        )
        .await?;
        match self.first_tool().await {
            Some(tool) => {
                self.say(
                    &mut outcome,
                    "agent",
                    "Of course, let me look that up for you.",
                )
                .await?;
                let input = input_for(&tool.input_schema, self.handoff);
                let answer = match self
                    .api
                    .execute_tool(tool.id, self.handoff.call_id, &input)
                    .await
                {
                    Ok(reply) => {
                        outcome.tool = Some((tool.name.clone(), reply.status));
                        if reply.status == ExecutionStatus::Succeeded {
                            Ok(spoken_answer(reply.output.as_ref()))
                        } else {
                            let why = reply
                                .error
                                .map_or_else(|| "no reason given".into(), |e| e.code);
                            Err(format!("tool {} failed: {why}", tool.name))
                        }
                    }
                    Err(err) => Err(format!("tool {} not run: {err}", tool.name)),
                };
                match answer {
                    Ok(answer) => self.say(&mut outcome, "agent", &answer).await?,
                    Err(problem) => {
                        self.report_error(&problem).await?;
                        self.say(
                            &mut outcome,
                            "agent",
                            "Sorry, I can't reach our booking system right now.",
                        )
                        .await?;
                    }
                }
            }
            None => {
                self.say(
                    &mut outcome,
                    "agent",
                    "I can't look that up from here; a colleague will call you back today.",
                )
                .await?;
            }
        }
        self.say(&mut outcome, "caller", "Great, thank you. Goodbye.")
            .await?;
        self.say(&mut outcome, "agent", "Goodbye, and have a nice day!")
            .await?;
        self.publish(
            runtime_event_type::CALL_ENDED,
            CallEnded {
                reason: "conversation_complete".into(),
            },
        )
        .await?;
        Ok(outcome)
    }

    /// The first tool the call's agent may use, if any. A real runtime hands
    /// the whole catalog to its LLM as function definitions.
    async fn first_tool(&self) -> Option<CatalogTool> {
        match self.api.tool_catalog(self.handoff.call_id).await {
            Ok(tools) => tools.into_iter().next(),
            Err(err) => {
                tracing::warn!(call_id = %self.handoff.call_id, %err, "no tool catalog");
                None
            }
        }
    }

    async fn say(
        &mut self,
        outcome: &mut Outcome,
        speaker: &str,
        text: &str,
    ) -> Result<(), ConversationError> {
        tokio::time::sleep(self.pause).await;
        let words = i32::try_from(text.split_whitespace().count()).unwrap_or(i32::MAX);
        let start_ms = self.clock_ms;
        let end_ms = start_ms.saturating_add(words.saturating_mul(MS_PER_WORD));
        // A short silence between turns.
        self.clock_ms = end_ms.saturating_add(400);
        self.publish(
            runtime_event_type::TRANSCRIPT_SEGMENT,
            TranscriptSegment {
                speaker: speaker.into(),
                text: text.into(),
                start_ms,
                end_ms,
            },
        )
        .await?;
        outcome.segments += 1;
        Ok(())
    }

    async fn report_error(&self, message: &str) -> Result<(), ConversationError> {
        tracing::warn!(call_id = %self.handoff.call_id, message, "runtime error");
        self.publish(
            runtime_event_type::RUNTIME_ERROR,
            RuntimeError {
                message: message.into(),
            },
        )
        .await
    }

    /// Publishes one event with JetStream and waits for the stream's ack:
    /// only then is it safe to consider it sent. The event id doubles as
    /// `Nats-Msg-Id`, so a retried publish is stored once.
    async fn publish(
        &self,
        kind: &'static str,
        data: impl Serialize,
    ) -> Result<(), ConversationError> {
        let err = |message: String| ConversationError::Publish { kind, message };
        let event = RuntimeEvent {
            event_id: Uuid::now_v7(),
            kind: kind.into(),
            call_id: self.handoff.call_id,
            tenant_id: self.handoff.tenant_id,
            occurred_at: Utc::now(),
            data: serde_json::to_value(data).map_err(|e| err(e.to_string()))?,
        };
        let body = serde_json::to_vec(&event).map_err(|e| err(e.to_string()))?;
        let subject = self
            .subjects
            .runtime_events(self.handoff.tenant_id, self.handoff.call_id);
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(event.event_id.to_string());
        let ack = async {
            self.js
                .send_publish(subject, publish)
                .await
                .map_err(|e| err(e.to_string()))?
                .await
                .map_err(|e| err(e.to_string()))
        };
        match tokio::time::timeout(PUBLISH_ACK_TIMEOUT, ack).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(err(format!("no ack within {PUBLISH_ACK_TIMEOUT:?}"))),
        }
    }
}

/// Arguments for a tool, filled from the call where a real runtime's LLM
/// would fill them from the conversation: each required property (every
/// property when none is required) gets the caller's number when its name
/// speaks of a phone, else a plain value of its type.
pub fn input_for(schema: &Value, handoff: &HandoffRequested) -> Value {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Value::Object(Map::new());
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut input = Map::new();
    for (name, property) in properties {
        if !required.is_empty() && !required.contains(&name.as_str()) {
            continue;
        }
        let value = if let Some(first) = property
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|values| values.first())
        {
            first.clone()
        } else {
            match property.get("type").and_then(Value::as_str) {
                Some("integer" | "number") => Value::from(1),
                Some("boolean") => Value::Bool(true),
                Some("object") => Value::Object(Map::new()),
                Some("array") => Value::Array(Vec::new()),
                _ if ["phone", "number", "caller"]
                    .iter()
                    .any(|w| name.contains(w)) =>
                {
                    Value::String(handoff.from.clone())
                }
                _ => Value::String("demo".into()),
            }
        };
        input.insert(name.clone(), value);
    }
    Value::Object(input)
}

/// What the agent says about a tool's output: its `message` when it has
/// one, else the output itself, shortened.
pub fn spoken_answer(output: Option<&Value>) -> String {
    let text = match output {
        Some(Value::Object(map)) => match map.get("message").and_then(Value::as_str) {
            Some(message) => message.to_owned(),
            None => Value::Object(map.clone()).to_string(),
        },
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "Done.".into(),
    };
    let short: String = text.chars().take(300).collect();
    format!("I found it. {short}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn handoff() -> HandoffRequested {
        HandoffRequested {
            dispatch_id: Uuid::nil(),
            call_id: Uuid::nil(),
            call_sid: "CA1".into(),
            tenant_id: Uuid::nil(),
            agent_id: None,
            agent_version_id: None,
            agent_version: None,
            from: "+14155550100".into(),
            to: "+15005550006".into(),
            expires_at: Utc::now(),
        }
    }

    #[test]
    fn tool_input_fills_required_properties_from_the_call() {
        let schema = json!({
            "type": "object",
            "properties": {
                "caller_phone": {"type": "string"},
                "party_size": {"type": "integer"},
                "kind": {"type": "string", "enum": ["table", "room"]},
                "note": {"type": "string"}
            },
            "required": ["caller_phone", "party_size", "kind"]
        });
        assert_eq!(
            input_for(&schema, &handoff()),
            json!({"caller_phone": "+14155550100", "party_size": 1, "kind": "table"})
        );
        // Without `required`, every property; without properties, nothing.
        let loose = json!({"properties": {"note": {"type": "string"}}});
        assert_eq!(input_for(&loose, &handoff()), json!({"note": "demo"}));
        assert_eq!(input_for(&json!({"type": "object"}), &handoff()), json!({}));
    }

    #[test]
    fn the_answer_speaks_the_message_or_the_output() {
        let said = spoken_answer(Some(&json!({"message": "Table for 2 at 8 pm."})));
        assert_eq!(said, "I found it. Table for 2 at 8 pm.");
        let said = spoken_answer(Some(&json!({"ok": true})));
        assert_eq!(said, "I found it. {\"ok\":true}");
        assert!(spoken_answer(Some(&json!("x".repeat(1000)))).len() < 320);
    }
}
