//! `POST /twilio/webhook/{inbound,status,recording}`: check the signature,
//! route, commit the session and its outbox event, answer, publish.

use std::sync::Arc;

use crate::twiml::{TWIML_CONTENT_TYPE, Twiml};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use shared::calls::event_type;
use shared::error::error_response;
use shared::redaction::DataStorage;
use shared::trace::TraceContext;
use uuid::Uuid;

use crate::config::SignatureCheck;
use crate::publisher::Publisher;
use crate::routing::PhoneRoutes;
use crate::store::{CallStore, CallWrite, SessionSeed, Stored};

/// Everything the webhook handlers need.
pub struct Ingress {
    pub signature: SignatureCheck,
    pub routes: PhoneRoutes,
    pub store: CallStore,
    pub publisher: Publisher,
    pub media_stream_url: Option<String>,
    pub media_stream_token: Option<String>,
}

pub fn router(ingress: Arc<Ingress>) -> Router {
    Router::new()
        .route("/twilio/webhook/inbound", post(inbound))
        .route("/twilio/webhook/status", post(status))
        .route("/twilio/webhook/recording", post(recording))
        .with_state(ingress)
}

/// Spoken when no media stream is configured.
const NO_RUNTIME_MESSAGE: &str = "Thank you for calling. No agent is available right now. Goodbye.";
const MAX_SID_LEN: usize = 64;

fn twiml(twiml: &Twiml) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, TWIML_CONTENT_TYPE)],
        twiml.render(),
    )
        .into_response()
}

/// Why a webhook is not accepted.
#[derive(Debug)]
enum WebhookError {
    BadRequest(String),
    BadSignature,
    /// Postgres could not commit: 503, so Twilio uses the fallback URL.
    Unavailable(String),
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        match self {
            WebhookError::BadRequest(message) => {
                error_response(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            WebhookError::BadSignature => {
                metrics::counter!("ingress_bad_signature_total").increment(1);
                error_response(
                    StatusCode::FORBIDDEN,
                    "invalid_signature",
                    "X-Twilio-Signature is missing or does not match",
                )
            }
            WebhookError::Unavailable(err) => {
                tracing::error!(%err, "cannot commit webhook; answering 503 so Twilio uses the fallback URL");
                metrics::counter!("ingress_store_failures_total").increment(1);
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the call could not be recorded; try again",
                )
            }
        }
    }
}

fn bad_request(message: impl Into<String>) -> WebhookError {
    WebhookError::BadRequest(message.into())
}

fn unavailable(err: &str) -> WebhookError {
    WebhookError::Unavailable(err.to_owned())
}

/// A checked webhook: its form parameters in order, as Twilio sent them.
struct Form {
    params: Vec<(String, String)>,
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn sid(&self, name: &str) -> Result<String, WebhookError> {
        match self.get(name) {
            None => Err(bad_request(format!("{name} is required"))),
            Some(v) if v.len() > MAX_SID_LEN || v.chars().any(char::is_control) => {
                Err(bad_request(format!(
                    "{name} must be at most {MAX_SID_LEN} printable characters"
                )))
            }
            Some(v) => Ok(v.to_owned()),
        }
    }

    /// The parameters as the event keeps them under the tenant's storage
    /// mode (`None`: the tenant is not known), as a JSON object (a
    /// repeated key keeps its last value).
    fn payload(&self, mode: Option<DataStorage>) -> serde_json::Value {
        DataStorage::twilio_params(
            mode,
            self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
}

/// Parses the form body and checks `X-Twilio-Signature` over the public URL
/// and every received parameter. 400 for a body that is not a form, 403 for
/// a missing or wrong signature.
fn accept(
    ingress: &Ingress,
    uri: &OriginalUri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Form, WebhookError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(bad_request(
            "expected an application/x-www-form-urlencoded body",
        ));
    }
    if std::str::from_utf8(body).is_err() {
        return Err(bad_request("the form body is not valid UTF-8"));
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // Percent-escapes that decode to invalid UTF-8 come back as U+FFFD.
    if params
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err(bad_request("the form body has invalid percent-encoding"));
    }
    // Postgres cannot store NUL in text or jsonb: refuse it here as bad
    // input rather than fail the commit.
    if params
        .iter()
        .any(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(bad_request("the form body contains a NUL character"));
    }
    if let SignatureCheck::Enabled {
        auth_token,
        base_url,
    } = &ingress.signature
    {
        let signature = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let path_and_query = uri
            .0
            .path_and_query()
            .map_or_else(|| uri.0.path(), |pq| pq.as_str());
        let url = format!("{base_url}{path_and_query}");
        if signature.is_empty() || !shared::twilio::validate(auth_token, &url, &params, signature) {
            return Err(WebhookError::BadSignature);
        }
    }
    Ok(Form { params })
}

fn seed(form: &Form, route: &crate::routing::Route) -> SessionSeed {
    SessionSeed {
        tenant_id: route.tenant_id,
        phone_number_id: route.phone_number_id,
        agent_id: route.agent_id,
        account_sid: form.get("AccountSid").map(str::to_owned),
        from: route
            .data_storage
            .number(form.get("From").unwrap_or_default()),
        to: route
            .data_storage
            .number(form.get("To").unwrap_or_default()),
        data_storage: route.data_storage,
        direction: form.get("Direction").unwrap_or("inbound").to_owned(),
    }
}

async fn store(ingress: &Ingress, write: CallWrite) -> Result<Stored, WebhookError> {
    let stored = ingress
        .store
        .write(write)
        .await
        .map_err(|e| unavailable(&e))?;
    if let Stored::Call {
        new_event: Some(row),
        ..
    } = &stored
    {
        ingress.publisher.enqueue(row.clone());
    }
    Ok(stored)
}

async fn inbound(
    State(ingress): State<Arc<Ingress>>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match accept(&ingress, &uri, &headers, &body) {
        Ok(form) => form,
        Err(err) => return err.into_response(),
    };
    let call_sid = match form.sid("CallSid") {
        Ok(sid) => sid,
        Err(err) => return err.into_response(),
    };
    let to = form.get("To").unwrap_or_default();
    let route = match ingress.routes.lookup(to).await {
        Ok(route) => route,
        Err(err) => return unavailable(&err.to_string()).into_response(),
    };
    // A number that is unknown, inactive or has no agent cannot take calls.
    let Some(route) = route.filter(|r| r.agent_id.is_some()) else {
        tracing::info!(%call_sid, "rejecting a call to an unrouted number");
        metrics::counter!("ingress_calls_rejected_total", "reason" => "unrouted").increment(1);
        return twiml(&Twiml::Reject);
    };
    let write = CallWrite {
        idempotency_key: call_sid.clone(),
        seed: Some(seed(&form, &route)),
        call_sid: call_sid.clone(),
        event_id: Uuid::now_v7(),
        kind: event_type::CALL_INBOUND,
        payload: form.payload(Some(route.data_storage)),
        occurred_at: Utc::now(),
        traceparent: TraceContext::from_http(&headers).to_string(),
    };
    let call_id = match store(&ingress, write).await {
        Ok(Stored::Call { rejected: true, .. }) => {
            tracing::info!(%call_sid, tenant_id = %route.tenant_id, "refusing a call: at the concurrent-call limit");
            metrics::counter!("ingress_calls_rejected_total", "reason" => "capacity").increment(1);
            return twiml(&Twiml::RejectBusy);
        }
        Ok(Stored::Call { call_id, .. }) => call_id,
        Ok(Stored::UnknownCall) => {
            return unavailable("session upsert returned no row").into_response();
        }
        Err(err) => return err.into_response(),
    };
    metrics::counter!("ingress_calls_accepted_total").increment(1);
    let answer = match &ingress.media_stream_url {
        Some(url) => {
            let mut parameters = vec![
                ("callSid".to_owned(), call_sid),
                ("callId".to_owned(), call_id.to_string()),
                ("tenantId".to_owned(), route.tenant_id.to_string()),
                (
                    "agentId".to_owned(),
                    route.agent_id.map(|a| a.to_string()).unwrap_or_default(),
                ),
            ];
            if let Some(token) = &ingress.media_stream_token {
                parameters.push(("token".to_owned(), token.clone()));
            }
            Twiml::ConnectStream {
                url: url.clone(),
                parameters,
            }
        }
        None => Twiml::SayHangup(NO_RUNTIME_MESSAGE.to_owned()),
    };
    twiml(&answer)
}

async fn status(
    State(ingress): State<Arc<Ingress>>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match accept(&ingress, &uri, &headers, &body) {
        Ok(form) => form,
        Err(err) => return err.into_response(),
    };
    let (call_sid, call_status) = match (form.sid("CallSid"), form.sid("CallStatus")) {
        (Ok(sid), Ok(status)) => (sid, status),
        (Err(err), _) | (_, Err(err)) => return err.into_response(),
    };
    // A status callback may be the first we hear of a call (its inbound
    // webhook went to the fallback URL): then the session is created from
    // the route of `To`, if that route could have taken the call (the same
    // rule as inbound: a number without an agent rejects its calls).
    let route = match form.get("To") {
        Some(to) => match ingress.routes.lookup(to).await {
            Ok(route) => route.filter(|r| r.agent_id.is_some()),
            Err(err) => return unavailable(&err.to_string()).into_response(),
        },
        None => None,
    };
    let write = CallWrite {
        idempotency_key: format!("{call_sid}:{call_status}"),
        seed: route.as_ref().map(|r| seed(&form, r)),
        call_sid,
        event_id: Uuid::now_v7(),
        kind: event_type::CALL_STATUS,
        payload: form.payload(route.as_ref().map(|r| r.data_storage)),
        occurred_at: Utc::now(),
        traceparent: TraceContext::from_http(&headers).to_string(),
    };
    callback_answer(store(&ingress, write).await)
}

async fn recording(
    State(ingress): State<Arc<Ingress>>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match accept(&ingress, &uri, &headers, &body) {
        Ok(form) => form,
        Err(err) => return err.into_response(),
    };
    let (call_sid, recording_sid) = match (form.sid("CallSid"), form.sid("RecordingSid")) {
        (Ok(call), Ok(rec)) => (call, rec),
        (Err(err), _) | (_, Err(err)) => return err.into_response(),
    };
    // One event per recording and recording status, so `in-progress` then
    // `completed` both count, but a retry of either adds nothing.
    let idempotency_key = match form.get("RecordingStatus") {
        Some(status) if status.len() <= MAX_SID_LEN => format!("{recording_sid}:{status}"),
        _ => recording_sid,
    };
    let write = CallWrite {
        idempotency_key,
        seed: None,
        call_sid,
        event_id: Uuid::now_v7(),
        kind: event_type::CALL_RECORDING,
        // Recording callbacks name no party; the tenant is not looked up.
        payload: form.payload(None),
        occurred_at: Utc::now(),
        traceparent: TraceContext::from_http(&headers).to_string(),
    };
    callback_answer(store(&ingress, write).await)
}

fn callback_answer(stored: Result<Stored, WebhookError>) -> Response {
    match stored {
        Ok(Stored::Call { .. }) => twiml(&Twiml::Empty),
        Ok(Stored::UnknownCall) => error_response(
            StatusCode::NOT_FOUND,
            "unknown_call",
            "no call with this CallSid",
        ),
        Err(err) => err.into_response(),
    }
}
