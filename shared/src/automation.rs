//! Messages of flow 2 (api <-> automation-worker, NATS request/reply on
//! `automation.tool.execute` and `automation.integration.test`).
//!
//! Secrets never travel in clear: the api seals an integration's secret
//! (AES-GCM, associated data [`integration_secret_aad`]) and an endpoint's
//! header values ([`tool_endpoint_headers_aad`]), and only the worker opens
//! them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The associated data binding a sealed integration secret to its tenant
/// and its row, so a ciphertext copied into another row (or another
/// tenant's) does not open. The api seals with it and the worker opens with
/// it: both must agree.
pub fn integration_secret_aad(tenant_id: Uuid, integration_id: Uuid) -> Vec<u8> {
    format!("integrations:{tenant_id}:{integration_id}").into_bytes()
}

/// `integrations.secret_aad_version` of a secret sealed with
/// [`integration_secret_aad`].
pub const INTEGRATION_SECRET_AAD_VERSION: i16 = 2;

/// The associated data of secrets sealed before the tenant was bound
/// (`secret_aad_version` 1): only the api's reseal opens with it.
pub fn legacy_integration_secret_aad(integration_id: Uuid) -> Vec<u8> {
    format!("integrations:{integration_id}").into_bytes()
}

/// The associated data binding an endpoint's sealed header values to its
/// tenant, its tool and the integration they are sent to: pointing the row
/// at another integration (another host) leaves them unopenable.
pub fn tool_endpoint_headers_aad(tenant_id: Uuid, tool_id: Uuid, integration_id: Uuid) -> Vec<u8> {
    format!("tool_endpoints:{tenant_id}:{tool_id}:{integration_id}").into_bytes()
}

/// Headers an endpoint's `headers_template` may not set: they frame the
/// request itself (which host, where the body ends, the connection), and a
/// tenant setting them could smuggle a second request or reach another
/// virtual host behind the same address.
pub const FRAMING_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding", "connection"];

/// Whether `name` is one of [`FRAMING_HEADERS`] (case-insensitive).
pub fn is_framing_header(name: &str) -> bool {
    FRAMING_HEADERS
        .iter()
        .any(|framing| framing.eq_ignore_ascii_case(name))
}

/// The NATS header that carries the api's signature of an automation
/// request: `t=<unix seconds>,v1=<base64 HMAC-SHA256>`.
pub const REQUEST_SIGNATURE_HEADER: &str = "vcp-request-signature";

/// How far a signed request's time may be from the worker's clock.
const REQUEST_MAX_AGE_SECS: i64 = 60;

/// What an automation request is (part of what is signed, so a signature
/// for one kind is no good for the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    ToolExecute,
    IntegrationTest,
    WebhookTest,
}

impl RequestKind {
    fn label(self) -> &'static [u8] {
        match self {
            Self::ToolExecute => b"tool.execute",
            Self::IntegrationTest => b"integration.test",
            Self::WebhookTest => b"webhooks.test",
        }
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256 keyed with `key` (HMAC takes keys of any length, so the
/// fallback is never taken).
fn hmac_sha256(key: &[u8]) -> HmacSha256 {
    use hmac::KeyInit;
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()))
}

/// Signs automation requests (the api) and checks them (the
/// automation-worker) with a key derived from `ENCRYPTION_KEY`, which both
/// hold and the voice runtime does not. The bus already lets only the api
/// publish `automation.*`; the signature keeps a request the api did not
/// send (a forged execution, an integration test that points a sealed secret
/// at another URL) from being acted on, should the bus ever let one through.
#[derive(Clone)]
pub struct RequestSigner {
    key: [u8; 32],
}

impl RequestSigner {
    pub fn new(encryption_key: &[u8; 32]) -> Self {
        use hmac::Mac;
        let mut mac = hmac_sha256(encryption_key);
        mac.update(b"voice-control-plane automation request signing v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, kind: RequestKind, at: i64, payload: &[u8]) -> HmacSha256 {
        use hmac::Mac;
        let mut mac = hmac_sha256(&self.key);
        mac.update(kind.label());
        mac.update(b"\n");
        mac.update(at.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        mac
    }

    /// The header value for `payload`, signed now.
    pub fn sign(&self, kind: RequestKind, payload: &[u8]) -> String {
        use base64::Engine;
        use hmac::Mac;
        let at = chrono::Utc::now().timestamp();
        let tag = self.mac(kind, at, payload).finalize().into_bytes();
        format!(
            "t={at},v1={}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }

    /// Whether `header` is a signature of `payload` as `kind`, made by a
    /// holder of the key within the last minute (constant-time compare).
    pub fn verify(&self, kind: RequestKind, payload: &[u8], header: Option<&str>) -> bool {
        use base64::Engine;
        use hmac::Mac;
        let Some((at, tag)) = header.and_then(|h| {
            let (t, v) = h.split_once(",v1=")?;
            let at: i64 = t.strip_prefix("t=")?.parse().ok()?;
            let tag = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            Some((at, tag))
        }) else {
            return false;
        };
        if (chrono::Utc::now().timestamp() - at).abs() > REQUEST_MAX_AGE_SECS {
            return false;
        }
        self.mac(kind, at, payload).verify_slice(&tag).is_ok()
    }
}

/// How automation-worker authenticates to n8n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    None,
    /// The secret is the value of `header_name`.
    Header,
    /// The secret is `user:password`.
    Basic,
    /// The secret is the token after `Bearer `.
    Bearer,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::None => "none",
            AuthType::Header => "header",
            AuthType::Basic => "basic",
            AuthType::Bearer => "bearer",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(AuthType::None),
            "header" => Some(AuthType::Header),
            "basic" => Some(AuthType::Basic),
            "bearer" => Some(AuthType::Bearer),
            _ => None,
        }
    }
}

/// A secret sealed with `shared::crypto::SecretBox`, as bytes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

impl From<crate::crypto::Sealed> for SealedSecret {
    fn from(s: crate::crypto::Sealed) -> Self {
        Self {
            ciphertext: s.ciphertext,
            nonce: s.nonce,
            key_id: s.key_id,
        }
    }
}

impl From<SealedSecret> for crate::crypto::Sealed {
    fn from(s: SealedSecret) -> Self {
        Self {
            ciphertext: s.ciphertext,
            nonce: s.nonce,
            key_id: s.key_id,
        }
    }
}

/// `automation.integration.test`: probe `GET <base_url>/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntegrationTestRequest {
    /// The id the integration will get if the test passes (the secret's AAD).
    pub integration_id: Uuid,
    pub tenant_id: Uuid,
    pub base_url: String,
    pub auth_type: AuthType,
    pub header_name: Option<String>,
    pub secret: Option<SealedSecret>,
}

/// Why an outbound call failed, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The URL is malformed or uses a refused scheme.
    InvalidUrl,
    /// The host resolves to (or is) a refused address (SSRF guard).
    AddressRefused,
    Dns,
    Connect,
    Tls,
    Timeout,
    /// n8n answered with a non-success status.
    HttpStatus,
    /// The secret could not be opened (wrong key or row).
    Secret,
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidUrl => "invalid_url",
            FailureKind::AddressRefused => "address_refused",
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::HttpStatus => "http_status",
            FailureKind::Secret => "secret",
            FailureKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeFailure {
    pub kind: FailureKind,
    pub message: String,
    pub http_status: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntegrationTestReply {
    pub reachable: bool,
    pub attempts: u32,
    pub latency_ms: u64,
    /// Set when `reachable` is false.
    pub failure: Option<ProbeFailure>,
}

/// `automation.tool.execute`: run the queued execution `execution_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolExecuteRequest {
    pub execution_id: Uuid,
    pub tenant_id: Uuid,
    /// What the api read when it queued the execution; the api always
    /// sends it. Optional on the wire only so that a request without it (an
    /// older api) still parses, to be refused and recorded as failed
    /// (`context_missing`) rather than dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ExecutionContext>,
}

/// Everything needed to run an execution: the execution, its tool's
/// endpoint and integration (the secret and the header values still sealed:
/// only the worker opens them), and the call the tool works for. The api
/// gets it from `execute_tool_checked` (migration 0014), which names its
/// keys as the fields here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionContext {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub tool_id: Uuid,
    pub trace_id: String,
    pub input: serde_json::Value,
    pub deadline_at: chrono::DateTime<chrono::Utc>,
    pub tool_name: String,
    pub webhook_path: Option<String>,
    pub method: Option<String>,
    /// The endpoint's header values, a JSON object of name to value, sealed
    /// with [`tool_endpoint_headers_aad`]; none when it has no headers.
    #[serde(default, with = "base64_bytes")]
    pub headers_ciphertext: Option<Vec<u8>>,
    #[serde(default, with = "base64_bytes")]
    pub headers_nonce: Option<Vec<u8>>,
    #[serde(default)]
    pub headers_key_id: Option<String>,
    /// The row still holds header values in clear (written by an older api
    /// and not resealed yet): they are left out, and the worker fails the
    /// execution rather than call without them.
    #[serde(default)]
    pub headers_unsealed: Option<bool>,
    pub timeout_ms: Option<i32>,
    pub max_retries: Option<i32>,
    pub integration_id: Option<Uuid>,
    pub base_url: Option<String>,
    pub auth_type: Option<String>,
    pub header_name: Option<String>,
    #[serde(default, with = "base64_bytes")]
    pub secret_ciphertext: Option<Vec<u8>>,
    #[serde(default, with = "base64_bytes")]
    pub secret_nonce: Option<Vec<u8>>,
    pub secret_key_id: Option<String>,
    pub integration_status: Option<String>,
    pub call_sid: String,
    pub from_number: String,
    pub to_number: String,
    pub agent_id: Option<Uuid>,
    pub agent_version: Option<i32>,
    /// The tenant's storage mode when the execution was requested: the
    /// worker stores the output under it. `input` above is the input as
    /// the caller sent it (for n8n); the row keeps it under the mode.
    #[serde(default)]
    pub data_storage: crate::redaction::DataStorage,
}

/// Optional bytes as standard base64 (Postgres' `encode(..., 'base64')`
/// without its line breaks).
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "queued" => Some(ExecutionStatus::Queued),
            "running" => Some(ExecutionStatus::Running),
            "succeeded" => Some(ExecutionStatus::Succeeded),
            "failed" => Some(ExecutionStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolError {
    /// For example `tool_endpoint_inactive`, `timeout`, `http_status`,
    /// `deadline_exceeded`, `worker_lost`, `worker_unavailable`.
    pub code: String,
    pub message: String,
}

/// Error codes of tool executions.
pub mod error_codes {
    pub const ENDPOINT_INACTIVE: &str = "tool_endpoint_inactive";
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    pub const WORKER_LOST: &str = "worker_lost";
    pub const WORKER_UNAVAILABLE: &str = "worker_unavailable";
    pub const OUTPUT_TOO_LARGE: &str = "output_too_large";
    pub const INVALID_OUTPUT: &str = "invalid_output";
    /// The request would not fit in one NATS message; it was never sent.
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
    /// The request came without the execution's context (an older api):
    /// the worker refused it and nothing was sent to n8n.
    pub const CONTEXT_MISSING: &str = "context_missing";
}

/// The outcome of an execution: automation-worker's reply, and the api's
/// answer as it is (200, and with `error` on 502/503/504).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ExecutionResult)]
pub struct ToolExecuteReply {
    pub execution_id: Uuid,
    pub trace_id: String,
    pub status: ExecutionStatus,
    pub output: Option<serde_json::Value>,
    pub attempts: u32,
    pub latency_ms: Option<u64>,
    /// n8n's last HTTP status, when it answered.
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ToolError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_context_round_trips_with_sealed_bytes_as_base64() {
        let ctx: ExecutionContext = serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "tenant_id": Uuid::nil(), "call_id": Uuid::nil(),
            "tool_id": Uuid::nil(), "trace_id": "t", "input": {"a": 1},
            "deadline_at": "2026-11-25T15:40:00.123456+00:00", "tool_name": "lookup",
            "webhook_path": "p", "method": "POST", "headers_ciphertext": "AAE=",
            "headers_nonce": "AgM=", "headers_key_id": "k", "headers_unsealed": false,
            "timeout_ms": 100, "max_retries": 0, "integration_id": null,
            "base_url": "https://n8n.example.com", "auth_type": "bearer", "header_name": null,
            "secret_ciphertext": "AAEC/w==", "secret_nonce": null, "secret_key_id": "k",
            "integration_status": "active", "call_sid": "CA1", "from_number": "+1",
            "to_number": "+2", "agent_id": null, "agent_version": 3
        }))
        .expect("the shape execute_tool_checked builds");
        assert_eq!(
            ctx.secret_ciphertext.as_deref(),
            Some(&[0u8, 1, 2, 255][..])
        );
        assert_eq!(ctx.secret_nonce, None);
        assert_eq!(ctx.headers_ciphertext.as_deref(), Some(&[0u8, 1][..]));
        assert_eq!(ctx.headers_nonce.as_deref(), Some(&[2u8, 3][..]));
        let again: ExecutionContext =
            serde_json::from_slice(&serde_json::to_vec(&ctx).expect("encode")).expect("decode");
        assert_eq!(again, ctx);
        let bad = serde_json::json!({"secret_ciphertext": "not base64!"});
        assert!(serde_json::from_value::<ExecutionContext>(bad).is_err());
    }

    #[test]
    fn wire_names_are_stable() {
        assert_eq!(
            serde_json::to_value(AuthType::Bearer).expect("json"),
            serde_json::json!("bearer")
        );
        assert_eq!(
            serde_json::to_value(FailureKind::HttpStatus).expect("json"),
            serde_json::json!("http_status")
        );
        for t in ["none", "header", "basic", "bearer"] {
            assert_eq!(AuthType::parse(t).map(AuthType::as_str), Some(t));
        }
        let (tenant, row, other) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        assert_eq!(
            integration_secret_aad(tenant, row),
            b"integrations:00000000-0000-0000-0000-000000000001:00000000-0000-0000-0000-000000000002".to_vec()
        );
        assert_eq!(
            legacy_integration_secret_aad(row),
            b"integrations:00000000-0000-0000-0000-000000000002".to_vec()
        );
        assert_eq!(
            tool_endpoint_headers_aad(tenant, row, other),
            b"tool_endpoints:00000000-0000-0000-0000-000000000001:00000000-0000-0000-0000-000000000002:00000000-0000-0000-0000-000000000003".to_vec()
        );
        assert_ne!(
            tool_endpoint_headers_aad(tenant, row, tenant),
            tool_endpoint_headers_aad(tenant, row, other)
        );
        // Another tenant: other associated data.
        assert_ne!(
            integration_secret_aad(other, row),
            integration_secret_aad(tenant, row)
        );
    }
}

#[cfg(test)]
mod signer_tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_once_and_only_as_itself() {
        let signer = RequestSigner::new(&[7; 32]);
        let header = signer.sign(RequestKind::ToolExecute, b"{\"a\":1}");
        assert!(signer.verify(RequestKind::ToolExecute, b"{\"a\":1}", Some(&header)));
        // Another payload, another kind, another key, no header, garbage.
        assert!(!signer.verify(RequestKind::ToolExecute, b"{\"a\":2}", Some(&header)));
        assert!(!signer.verify(RequestKind::IntegrationTest, b"{\"a\":1}", Some(&header)));
        assert!(!RequestSigner::new(&[8; 32]).verify(
            RequestKind::ToolExecute,
            b"{\"a\":1}",
            Some(&header)
        ));
        assert!(!signer.verify(RequestKind::ToolExecute, b"{\"a\":1}", None));
        assert!(!signer.verify(RequestKind::ToolExecute, b"{\"a\":1}", Some("t=1,v1=AAAA")));
        assert!(!signer.verify(RequestKind::ToolExecute, b"{\"a\":1}", Some("nonsense")));
    }

    #[test]
    fn an_old_signature_is_refused() {
        use base64::Engine;
        use hmac::Mac;
        let signer = RequestSigner::new(&[7; 32]);
        let at = chrono::Utc::now().timestamp() - 3600;
        let tag = signer
            .mac(RequestKind::ToolExecute, at, b"{}")
            .finalize()
            .into_bytes();
        let header = format!(
            "t={at},v1={}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        );
        assert!(!signer.verify(RequestKind::ToolExecute, b"{}", Some(&header)));
        // The same, made now, passes: only the age was wrong.
        let fresh = signer.sign(RequestKind::ToolExecute, b"{}");
        assert!(signer.verify(RequestKind::ToolExecute, b"{}", Some(&fresh)));
    }
}
