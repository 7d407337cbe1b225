//! Tenant event webhooks (docs/decisions/0048-tenant-event-webhooks.md):
//! the event types, signing secrets, Standard Webhooks 1.0 signatures, the
//! body every attempt sends, the retry schedule and the message that
//! carries a due delivery over NATS to the automation-worker.
//!
//! Events are recorded by triggers (`migrations/0019_webhook_endpoints.sql`)
//! in the transaction of the change they describe; the api manages
//! endpoints, the automation-worker delivers.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// Every event type an endpoint may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "call.started",
    "call.answered",
    "call.ended",
    "call.recording_ready",
    "call.transcript_ready",
    "tool.execution_failed",
    "runtime.dispatch_expired",
    TEST_EVENT,
];

/// The event `POST /internal/webhook-endpoints/{id}/test` sends, whatever
/// the endpoint subscribes to.
pub const TEST_EVENT: &str = "webhook.test";

/// The event whose body may carry the recording's URL.
pub const RECORDING_READY_EVENT: &str = "call.recording_ready";

pub fn is_event_type(name: &str) -> bool {
    EVENT_TYPES.contains(&name)
}

/// Prefix of a signing secret, as Standard Webhooks libraries expect it.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn generate_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(crate::crypto::random_bytes::<32>())
    )
}

/// Associated data of an endpoint's sealed secrets: a ciphertext copied to
/// another endpoint or tenant does not open.
pub fn secret_aad(tenant_id: Uuid, endpoint_id: Uuid) -> Vec<u8> {
    format!("webhook_endpoints:{tenant_id}:{endpoint_id}").into_bytes()
}

/// The `webhook-id` header of a message: the same on every attempt.
pub fn message_id(id: Uuid) -> String {
    format!("msg_{}", id.simple())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret is whsec_ followed by base64")]
pub struct InvalidSecret;

/// One signature of the `webhook-signature` header: `v1,` and the base64
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed with the secret's
/// decoded bytes.
pub fn sign(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, InvalidSecret> {
    let key = STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .map_err(|_| InvalidSecret)?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|_| InvalidSecret)?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` header: one signature per secret, separated by
/// spaces (during a rotation, the new secret's and the old one's).
pub fn signature_header(
    secrets: &[&str],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, InvalidSecret> {
    let signatures = secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

/// The body of every attempt of a message: `{"type", "timestamp", "data"}`,
/// the same bytes each time (the timestamp is when the event was recorded).
pub fn body(event_type: &str, recorded_at: DateTime<Utc>, data: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "data": data,
    });
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A due delivery with what its attempt needs, carried from the relay to
/// whichever worker takes it (the relay reads it for a batch in one
/// statement, so an attempt reads nothing). `lease` is the one the relay
/// gave it: only its holder records the attempt, so a copy that arrives
/// after the attempt changes nothing. The signing secrets travel sealed,
/// as the automation requests' do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DueDelivery {
    pub delivery_id: Uuid,
    pub tenant_id: Uuid,
    pub endpoint_id: Uuid,
    pub lease: Uuid,
    /// Attempts already recorded.
    pub attempts: i32,
    pub url: String,
    pub disabled: bool,
    pub secret_ciphertext: Vec<u8>,
    pub secret_nonce: Vec<u8>,
    pub secret_key_id: String,
    /// The secret before the last rotation, while it still signs.
    pub previous_secret_ciphertext: Option<Vec<u8>>,
    pub previous_secret_nonce: Option<Vec<u8>>,
    pub previous_secret_key_id: Option<String>,
    pub message_id: Uuid,
    pub event_type: String,
    pub data: serde_json::Value,
    /// When the event was recorded: the body's `timestamp`.
    pub recorded_at: DateTime<Utc>,
}

/// The columns of a [`DueDelivery`], from `webhook_deliveries d` with its
/// endpoint `e` and message `m` (each looked up by key).
pub const DUE_DELIVERY_COLUMNS: &str = "d.id AS delivery_id, d.tenant_id, d.endpoint_id, d.lease, d.attempts,
    e.url, e.disabled, e.secret_ciphertext, e.secret_nonce, e.secret_key_id,
    CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_ciphertext END AS previous_secret_ciphertext,
    CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_nonce END AS previous_secret_nonce,
    CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_key_id END AS previous_secret_key_id,
    m.id AS message_id, m.event_type, m.data, m.created_at AS recorded_at";

/// The endpoint `e` and message `m` of a delivery `d`, each by its primary
/// key (`LIMIT 1` keeps a generic plan from joining them by scanning).
pub const DUE_DELIVERY_JOINS: &str = "
CROSS JOIN LATERAL (SELECT * FROM webhook_endpoints WHERE id = d.endpoint_id
                    AND tenant_id IS NOT DISTINCT FROM d.tenant_id LIMIT 1) e
CROSS JOIN LATERAL (SELECT * FROM webhook_messages WHERE id = d.message_id
                    AND tenant_id IS NOT DISTINCT FROM d.tenant_id LIMIT 1) m";

/// `webhooks.test`: the api asks a worker to make the first attempt of a
/// test delivery now and answer with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestDeliveryRequest {
    pub delivery_id: Uuid,
    pub tenant_id: Uuid,
    pub endpoint_id: Uuid,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptOutcome {
    /// The endpoint answered 2xx.
    pub delivered: bool,
    /// The endpoint's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// Why the attempt failed (timeout, connection refused, a refused
    /// address, the status), when it did.
    pub error: Option<String>,
    pub latency_ms: u64,
    /// `pending` (another attempt is scheduled), `succeeded` or `failed`.
    pub delivery_status: String,
}

/// The body of every event webhook, as the OpenAPI document describes it
/// (`WebhookEvent`); the triggers build the `data`, these types only
/// document it (and the tests check the triggers against them).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEvent {
    /// One of the event types; says which schema `data` follows.
    #[serde(rename = "type")]
    #[schema(example = "call.ended")]
    pub event_type: String,
    /// When the event was recorded (RFC 3339, microseconds, UTC): the same
    /// on every attempt.
    pub timestamp: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// `data` of `call.started` and `call.answered`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallEventData {
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub call_sid: String,
    pub agent_id: Option<Uuid>,
    pub agent_version_id: Option<Uuid>,
    pub phone_number_id: Option<Uuid>,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The caller's number (E.164).
    pub from: String,
    /// The number called (E.164).
    pub to: String,
    /// Twilio's call status at the time.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// `data` of `call.ended`: the call, and how long it rang and lasted.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallEndedData {
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub call_sid: String,
    pub agent_id: Option<Uuid>,
    pub agent_version_id: Option<Uuid>,
    pub phone_number_id: Option<Uuid>,
    pub direction: String,
    pub from: String,
    pub to: String,
    /// The final status: `completed`, `busy`, `failed`, `no-answer` or
    /// `canceled`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// From the start to the answer (to the end when never answered).
    pub ring_seconds: i64,
    /// From the answer to the end (Twilio's `CallDuration` when given); 0
    /// when never answered.
    pub talk_seconds: i64,
    pub total_seconds: i64,
}

/// `data` of `call.recording_ready`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingReadyData {
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub recording_id: Uuid,
    pub recording_sid: String,
    pub duration_seconds: Option<i64>,
    pub channels: Option<i64>,
    pub status: String,
    /// The media URL, only where the deployment sets
    /// `RECORDINGS_EXPOSE_URL=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `data` of `call.transcript_ready`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscriptReadyData {
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub agent_id: Option<Uuid>,
    /// Transcript segments stored for the call.
    pub segments: i64,
}

/// `data` of `tool.execution_failed`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolExecutionFailedData {
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub execution_id: Uuid,
    pub tool_id: Uuid,
    /// A stable code (`http_status`, `timeout`, `worker_lost`...).
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// n8n's answer, when there was one.
    pub http_status: Option<i64>,
    pub attempts: i64,
    pub latency_ms: Option<i64>,
}

/// `data` of `runtime.dispatch_expired`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchExpiredData {
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub agent_version_id: Option<Uuid>,
    pub dispatch_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// `data` of `webhook.test`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestEventData {
    pub tenant_id: Uuid,
    pub endpoint_id: Uuid,
}

/// Checks `data` against the schema of `event_type`: every field the
/// schema names, none it does not. The tests hold the triggers to it.
pub fn check_data(event_type: &str, data: &serde_json::Value) -> Result<(), String> {
    fn check<T: serde::de::DeserializeOwned>(data: &serde_json::Value) -> Result<(), String> {
        serde_json::from_value::<T>(data.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    match event_type {
        "call.started" | "call.answered" => check::<CallEventData>(data),
        "call.ended" => check::<CallEndedData>(data),
        "call.recording_ready" => check::<RecordingReadyData>(data),
        "call.transcript_ready" => check::<TranscriptReadyData>(data),
        "tool.execution_failed" => check::<ToolExecutionFailedData>(data),
        "runtime.dispatch_expired" => check::<DispatchExpiredData>(data),
        TEST_EVENT => check::<TestEventData>(data),
        other => Err(format!("unknown event type {other}")),
    }
}

/// Whether an HTTP status asks for another attempt: 408, 409, 429 and 5xx.
/// Any other 4xx ends the chain as failed; 2xx is delivered.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// The delays before each attempt of a delivery (the first is usually 0):
/// attempt `n` (0-based) waits `delays[n]` after attempt `n - 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

/// About immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: a little
/// over a day of attempts.
pub const DEFAULT_RETRY_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

impl RetrySchedule {
    /// A comma-separated list of durations (`0s,1s,2s`); 1 to 20 of them.
    pub fn parse(value: &str) -> Result<Self, String> {
        let delays = value
            .split(',')
            .map(str::trim)
            .map(|d| humantime::parse_duration(d).map_err(|e| format!("{d:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 20 {
            return Err("give 1 to 20 durations".into());
        }
        Ok(Self(delays))
    }

    /// How many attempts a delivery gets.
    pub fn attempts(&self) -> usize {
        self.0.len()
    }

    /// The delay before the attempt after `attempts_made`, jittered by up
    /// to a fifth either way so retries of many deliveries spread out;
    /// `None` when the schedule is used up.
    pub fn next_delay(&self, attempts_made: usize) -> Option<Duration> {
        let delay = *self.0.get(attempts_made)?;
        Some(delay.mul_f64(rand::random_range(0.8..=1.2)))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::parse(DEFAULT_RETRY_SCHEDULE).unwrap_or_else(|_| Self(vec![Duration::ZERO]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks libraries
    /// (standard-webhooks/standard-webhooks, `libraries/*/tests`).
    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signature = sign(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .expect("valid secret");
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let (new, old) = (generate_secret(), generate_secret());
        let header = signature_header(&[&new, &old], "msg_1", 1, b"{}").expect("valid");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&new, "msg_1", 1, b"{}").expect("valid"));
        assert_eq!(parts[1], sign(&old, "msg_1", 1, b"{}").expect("valid"));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(sign("whsec_not base64!", "m", 1, b""), Err(InvalidSecret));
    }

    #[test]
    fn secrets_are_whsec_and_24_or_more_random_bytes() {
        let secret = generate_secret();
        let raw = STANDARD
            .decode(secret.strip_prefix(SECRET_PREFIX).expect("prefix"))
            .expect("base64");
        assert!(raw.len() >= 24);
        assert_ne!(secret, generate_secret());
    }

    #[test]
    fn the_schedule_parses_and_ends() {
        let schedule = RetrySchedule::parse("0s, 1s,2m").expect("parses");
        assert_eq!(schedule.attempts(), 3);
        assert_eq!(schedule.next_delay(0), Some(Duration::ZERO));
        let second = schedule.next_delay(1).expect("second");
        assert!(second >= Duration::from_millis(800) && second <= Duration::from_millis(1200));
        assert_eq!(schedule.next_delay(3), None);
        assert!(RetrySchedule::parse("").is_err());
        assert!(RetrySchedule::parse("1s,soon").is_err());
        assert_eq!(RetrySchedule::default().attempts(), 8);
    }

    #[test]
    fn retryable_statuses() {
        for status in [408, 409, 429, 500, 502, 503] {
            assert!(status_is_retryable(status), "{status}");
        }
        for status in [400, 401, 403, 404, 410, 422] {
            assert!(!status_is_retryable(status), "{status}");
        }
    }
}
