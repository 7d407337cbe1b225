//! `automation.tool.execute`: run one queued tool execution against its n8n
//! webhook and record the outcome.
//!
//! The api has recorded the execution (queued) and its `tool.requested`
//! timeline event and sent what is needed to run it; this calls
//! `<base_url>/webhook/<webhook_path>` with the call's context (marking the
//! execution running if that takes more than a moment), retries
//! within the execution's deadline, and records status, HTTP status,
//! attempts, latency, output or error with a `tool.succeeded` /
//! `tool.failed` event in one statement, then replies. The statements are
//! `shared::tool_executions`'.
//!
//! A request must carry its context: one without it (from an api older than
//! the context) is refused, its execution failed `context_missing`, and
//! nothing is sent to n8n.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use shared::automation::{
    AuthType, ExecutionContext, ExecutionStatus, FailureKind, ProbeFailure, ToolError,
    ToolExecuteReply, ToolExecuteRequest, error_codes,
};
use shared::crypto::{Sealed, SecretBox};
use shared::tool_executions::{self, Outcome};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::outbound::{Answer, Auth, Outbound, open_endpoint_headers, open_integration_secret};

/// Time kept between the worker's own deadline and the execution's, to
/// record the outcome and reply before the api gives up.
const REPLY_MARGIN: Duration = Duration::from_millis(250);

/// How long an n8n call runs before its execution is marked running: a
/// slow tool shows `running` while it runs, and a fast one goes from
/// `queued` straight to its outcome (with `started_at` all the same)
/// without a write on its path. The mark is not what keeps a tool from
/// running twice: the api sends each execution once, as a core NATS request
/// that one member of the queue group receives at most once.
const MARK_RUNNING_AFTER: Duration = Duration::from_millis(25);

pub struct Executor {
    pub pool: PgPool,
    pub outbound: Outbound,
    pub secrets: SecretBox,
    pub max_output_bytes: usize,
    /// Wait for the WAL flush when recording (see `AUTOMATION_SYNCHRONOUS_COMMIT`).
    pub synchronous_commit: bool,
    /// This instance (`AUTOMATION_WORKER_ID`), written into the outcome's
    /// timeline event.
    pub worker_id: String,
}

impl Executor {
    /// Runs the execution and answers what was recorded. `Err` only when
    /// Postgres fails or the execution vanished.
    pub async fn handle(&self, req: ToolExecuteRequest) -> anyhow::Result<ToolExecuteReply> {
        let started_at = Utc::now();
        let ToolExecuteRequest {
            execution_id,
            tenant_id,
            context,
        } = req;
        let ctx = match context {
            // No Postgres round trip before the n8n call.
            Some(ctx) if ctx.id == execution_id && ctx.tenant_id == tenant_id => ctx,
            Some(_) => {
                let why = "the request's context is for another execution";
                return self.refuse(execution_id, tenant_id, why).await;
            }
            None => {
                let why = "the request carried no execution context (sent by an older api)";
                return self.refuse(execution_id, tenant_id, why).await;
            }
        };
        let finished = self.run_marking_slow(&ctx).await;
        metrics::counter!("automation_tool_executions_total", "status" => finished.status.as_str())
            .increment(1);
        metrics::histogram!("automation_tool_execution_seconds")
            .record(Duration::from_millis(finished.latency_ms).as_secs_f64());
        let recorded = tool_executions::record_outcome(
            &self.pool,
            &ctx,
            &finished,
            started_at,
            &self.worker_id,
            self.synchronous_commit,
        )
        .await?;
        if !recorded {
            // The reaper got there first (the worker was too slow): answer
            // what is recorded, so nobody is told two different stories.
            return self
                .recorded(ctx.id, ctx.tenant_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("execution {} vanished", ctx.id));
        }
        tracing::info!(
            execution_id = %ctx.id,
            trace_id = %ctx.trace_id,
            tool = %ctx.tool_name,
            status = finished.status.as_str(),
            attempts = finished.attempts,
            latency_ms = finished.latency_ms,
            error_code = finished.error.as_ref().map(|e| e.code.as_str()),
            "tool execution finished"
        );
        Ok(ToolExecuteReply {
            execution_id: ctx.id,
            trace_id: ctx.trace_id,
            status: finished.status,
            output: finished.output,
            error: finished.error,
            http_status: finished.http_status,
            attempts: finished.attempts,
            latency_ms: Some(finished.latency_ms),
        })
    }

    /// Refuses a request it cannot run as sent: the execution, if still
    /// open, fails `context_missing` with its event, and the answer is its
    /// record (an execution already finished keeps its outcome).
    async fn refuse(
        &self,
        execution_id: Uuid,
        tenant_id: Uuid,
        why: &str,
    ) -> anyhow::Result<ToolExecuteReply> {
        let error = ToolError {
            code: error_codes::CONTEXT_MISSING.into(),
            message: format!("{why}; refused without calling n8n"),
        };
        tracing::warn!(%execution_id, reason = why, "tool execution request refused");
        if let Some(open) = tool_executions::find_open(&self.pool, execution_id, tenant_id).await? {
            tool_executions::fail_open(&self.pool, &open, &error, Some(&self.worker_id)).await?;
        }
        Ok(self
            .recorded(execution_id, tenant_id)
            .await?
            .unwrap_or_else(|| ToolExecuteReply {
                execution_id,
                trace_id: String::new(),
                status: ExecutionStatus::Failed,
                output: None,
                error: Some(error),
                http_status: None,
                attempts: 0,
                latency_ms: None,
            }))
    }

    /// [`Self::run`], marking the execution running if its n8n call takes
    /// longer than [`MARK_RUNNING_AFTER`].
    async fn run_marking_slow(&self, ctx: &ExecutionContext) -> Outcome {
        let run = self.run(ctx);
        tokio::pin!(run);
        tokio::select! {
            finished = &mut run => return finished,
            () = tokio::time::sleep(MARK_RUNNING_AFTER) => {}
        }
        let mark = tool_executions::mark_running(&self.pool, ctx.id, ctx.tenant_id);
        let (marked, finished) = tokio::join!(mark, run);
        if let Err(err) = marked {
            // The outcome is recorded all the same (from `queued`).
            tracing::warn!(execution_id = %ctx.id, %err, "cannot mark the execution running");
        }
        finished
    }

    async fn run(&self, ctx: &ExecutionContext) -> Outcome {
        let started = Instant::now();
        let until_deadline = (ctx.deadline_at - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(REPLY_MARGIN);
        let deadline = started + until_deadline;
        let prepared = match self.prepare(ctx) {
            Ok(p) => p,
            Err(f) => return Outcome::failed(f.kind.as_str(), f.message, 0, 0),
        };
        if until_deadline.is_zero() {
            return Outcome::failed(
                error_codes::DEADLINE_EXCEEDED,
                "the execution's deadline passed before it could start",
                0,
                0,
            );
        }
        let Prepared {
            url,
            method,
            headers,
            auth,
            body,
            timeout,
            max_retries,
        } = prepared;
        let client = self.outbound.client();
        let outcome = self
            .outbound
            .call_with_retries(
                max_retries,
                timeout,
                deadline,
                self.max_output_bytes,
                || {
                    let mut req = client.request(method.clone(), url.clone());
                    for (name, value) in &headers {
                        req = req.header(name.clone(), value.clone());
                    }
                    if method != Method::GET {
                        req = req.json(&body);
                    }
                    auth.apply(req)
                },
            )
            .await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let attempts = outcome.attempts;
        match outcome.result {
            Ok(answer) => interpret(answer, attempts, latency_ms, &method, ctx),
            Err(failure) => {
                let code = if outcome.deadline_hit && failure.kind == FailureKind::Timeout {
                    error_codes::DEADLINE_EXCEEDED
                } else {
                    failure.kind.as_str()
                };
                Outcome::failed(code, failure.message, attempts, latency_ms)
            }
        }
    }

    fn prepare(&self, ctx: &ExecutionContext) -> Result<Prepared, ProbeFailure> {
        let other = |message: &str| ProbeFailure {
            kind: FailureKind::Other,
            message: message.to_owned(),
            http_status: None,
        };
        let (Some(path), Some(base_url), Some(integration_id)) =
            (&ctx.webhook_path, &ctx.base_url, ctx.integration_id)
        else {
            return Err(other("the tool has no endpoint"));
        };
        if ctx.integration_status.as_deref() != Some("active") {
            return Err(other("the tool's integration is disabled"));
        }
        let url = webhook_url(base_url, path)?;
        let url = self.outbound.checked_url(url.as_str())?;
        let method = Method::from_bytes(ctx.method.as_deref().unwrap_or("POST").as_bytes())
            .map_err(|_| other("the endpoint's method is invalid"))?;
        let secret = self.open_secret(ctx, integration_id)?;
        let auth_type = ctx
            .auth_type
            .as_deref()
            .and_then(AuthType::parse)
            .ok_or_else(|| other("the integration's auth_type is unknown"))?;
        let auth = Auth::new(auth_type, ctx.header_name.as_deref(), secret)?;
        let vars = [
            ("call_id", ctx.call_id.to_string()),
            ("call_sid", ctx.call_sid.clone()),
            ("tenant_id", ctx.tenant_id.to_string()),
            (
                "agent_id",
                ctx.agent_id.map(|a| a.to_string()).unwrap_or_default(),
            ),
            ("trace_id", ctx.trace_id.clone()),
            ("execution_id", ctx.id.to_string()),
        ];
        let template = self.open_headers(ctx, integration_id)?;
        let headers = render_headers(template.as_ref(), &vars)?;
        let body = json!({
            "tool": ctx.tool_name,
            "input": ctx.input,
            "execution_id": ctx.id,
            "trace_id": ctx.trace_id,
            "call": {
                "id": ctx.call_id,
                "sid": ctx.call_sid,
                "from": ctx.from_number,
                "to": ctx.to_number,
                "tenant_id": ctx.tenant_id,
                "agent_id": ctx.agent_id,
                "agent_version": ctx.agent_version,
            },
        });
        let timeout_ms = u64::try_from(ctx.timeout_ms.unwrap_or(8000)).unwrap_or(8000);
        let max_retries = u32::try_from(ctx.max_retries.unwrap_or(2)).unwrap_or(0);
        Ok(Prepared {
            url,
            method,
            headers,
            auth,
            body,
            timeout: Duration::from_millis(timeout_ms),
            max_retries,
        })
    }

    fn open_secret(
        &self,
        ctx: &ExecutionContext,
        integration_id: Uuid,
    ) -> Result<Option<String>, ProbeFailure> {
        let (Some(ciphertext), Some(nonce), Some(key_id)) = (
            &ctx.secret_ciphertext,
            &ctx.secret_nonce,
            &ctx.secret_key_id,
        ) else {
            return Ok(None);
        };
        let sealed = Sealed {
            ciphertext: ciphertext.clone(),
            nonce: nonce.clone(),
            key_id: key_id.clone(),
        };
        open_integration_secret(&self.secrets, &sealed, ctx.tenant_id, integration_id).map(Some)
    }

    /// The endpoint's header template, opened.
    fn open_headers(
        &self,
        ctx: &ExecutionContext,
        integration_id: Uuid,
    ) -> Result<Option<Value>, ProbeFailure> {
        if ctx.headers_unsealed == Some(true) {
            return Err(ProbeFailure {
                kind: FailureKind::Secret,
                message: "the endpoint's header values are not sealed yet (the api reseals them at start-up)".into(),
                http_status: None,
            });
        }
        let (Some(ciphertext), Some(nonce), Some(key_id)) = (
            &ctx.headers_ciphertext,
            &ctx.headers_nonce,
            &ctx.headers_key_id,
        ) else {
            return Ok(None);
        };
        let sealed = Sealed {
            ciphertext: ciphertext.clone(),
            nonce: nonce.clone(),
            key_id: key_id.clone(),
        };
        open_endpoint_headers(
            &self.secrets,
            &sealed,
            ctx.tenant_id,
            ctx.tool_id,
            integration_id,
        )
        .map(Some)
    }

    /// The execution as recorded; none when it is unknown.
    async fn recorded(
        &self,
        id: Uuid,
        tenant_id: Uuid,
    ) -> anyhow::Result<Option<ToolExecuteReply>> {
        let row: Option<RecordedRow> = sqlx::query_as(
            "SELECT id, trace_id, status, output, error_code, error_message, http_status, attempts, latency_ms
             FROM tool_executions WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(RecordedRow::into_reply))
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct RecordedRow {
    pub id: Uuid,
    pub trace_id: String,
    pub status: String,
    pub output: Option<Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub http_status: Option<i32>,
    pub attempts: i32,
    pub latency_ms: Option<i32>,
}

impl RecordedRow {
    pub fn into_reply(self) -> ToolExecuteReply {
        ToolExecuteReply {
            execution_id: self.id,
            trace_id: self.trace_id,
            status: ExecutionStatus::parse(&self.status).unwrap_or(ExecutionStatus::Failed),
            output: self.output,
            error: self.error_code.map(|code| ToolError {
                code,
                message: self.error_message.unwrap_or_default(),
            }),
            http_status: self.http_status.and_then(|s| u16::try_from(s).ok()),
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            latency_ms: self.latency_ms.and_then(|l| u64::try_from(l).ok()),
        }
    }
}

struct Prepared {
    url: url::Url,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    auth: Auth,
    body: Value,
    timeout: Duration,
    max_retries: u32,
}

/// `<base_url>/webhook/<webhook_path>`, refusing paths that would leave
/// `/webhook/` (`..`, query, fragment): the integration's credentials must
/// only ever reach its webhooks.
pub fn webhook_url(base_url: &str, path: &str) -> Result<url::Url, ProbeFailure> {
    let invalid = |message: &str| ProbeFailure {
        kind: FailureKind::InvalidUrl,
        message: message.to_owned(),
        http_status: None,
    };
    let path = path.trim().trim_matches('/');
    if path.is_empty()
        || path.contains(['?', '#', '\\', '%'])
        || path.split('/').any(|seg| seg == "." || seg == "..")
    {
        return Err(invalid(
            "the webhook path must be plain path segments (no '..', '?', '#', '%' or '\\')",
        ));
    }
    let base = base_url.trim_end_matches('/');
    let joined = format!("{base}/webhook/{path}");
    let url = url::Url::parse(&joined).map_err(|e| invalid(&format!("invalid URL: {e}")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the integration's base URL must not carry a query"));
    }
    Ok(url)
}

/// Fills `{{name}}` placeholders of the endpoint's headers template.
pub fn render_headers(
    template: Option<&Value>,
    vars: &[(&str, String)],
) -> Result<Vec<(HeaderName, HeaderValue)>, ProbeFailure> {
    let invalid = |message: String| ProbeFailure {
        kind: FailureKind::Other,
        message,
        http_status: None,
    };
    let Some(Value::Object(map)) = template else {
        return Ok(Vec::new());
    };
    let mut headers = Vec::with_capacity(map.len());
    for (name, value) in map {
        let mut text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for (var, replacement) in vars {
            text = text.replace(&format!("{{{{{var}}}}}"), replacement);
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("headers_template: {name:?} is not a header name")))?;
        // Refused at creation by the api too; a row written before that is
        // refused here.
        if shared::automation::is_framing_header(name.as_str()) {
            return Err(invalid(format!(
                "headers_template: {name} cannot be templated"
            )));
        }
        let value = HeaderValue::from_str(&text)
            .map_err(|_| invalid(format!("headers_template: the value of {name} is invalid")))?;
        headers.push((name, value));
    }
    Ok(headers)
}

fn interpret(
    answer: Answer,
    attempts: u32,
    latency_ms: u64,
    method: &Method,
    ctx: &ExecutionContext,
) -> Outcome {
    let status = answer.status.as_u16();
    let with_status = |mut f: Outcome| {
        f.http_status = Some(status);
        f
    };
    if answer.status.is_success() {
        if answer.truncated {
            return with_status(Outcome::failed(
                error_codes::OUTPUT_TOO_LARGE,
                "n8n's answer is larger than AUTOMATION_MAX_OUTPUT_BYTES",
                attempts,
                latency_ms,
            ));
        }
        // Postgres' jsonb cannot hold U+0000: such an answer could never be
        // recorded, so it fails here with a clear code instead.
        if answer.body.contains(&0) || answer.body.windows(6).any(|w| w == b"\\u0000") {
            return with_status(Outcome::failed(
                error_codes::INVALID_OUTPUT,
                "n8n's answer contains a NUL character, which cannot be stored",
                attempts,
                latency_ms,
            ));
        }
        let output = if answer.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(&answer.body) {
                Ok(v) => v,
                // A workflow answering text is still an answer.
                Err(_) => Value::String(String::from_utf8_lossy(&answer.body).into_owned()),
            }
        };
        return Outcome {
            status: ExecutionStatus::Succeeded,
            output: Some(output),
            error: None,
            http_status: Some(status),
            attempts,
            latency_ms,
        };
    }
    let text = String::from_utf8_lossy(&answer.body);
    if status == 404 && text.contains("not registered") {
        return with_status(Outcome::failed(
            error_codes::ENDPOINT_INACTIVE,
            format!(
                "n8n has no active workflow for {method} webhook/{}: activate the workflow in n8n",
                ctx.webhook_path.as_deref().unwrap_or_default()
            ),
            attempts,
            latency_ms,
        ));
    }
    let message = match status {
        401 | 403 => format!("n8n refused the integration's credentials (HTTP {status})"),
        429 => "n8n is rate limiting (HTTP 429) after every retry".to_owned(),
        s if s >= 500 => format!("n8n failed (HTTP {s}) after {attempts} attempts"),
        s => format!("n8n answered HTTP {s}"),
    };
    with_status(Outcome::failed(
        FailureKind::HttpStatus.as_str(),
        message,
        attempts,
        latency_ms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_stay_under_webhook() {
        let ok = webhook_url("https://n8n.example.com/", "/orders/lookup").expect("url");
        assert_eq!(ok.as_str(), "https://n8n.example.com/webhook/orders/lookup");
        let ok = webhook_url("https://example.com/n8n", "a").expect("url");
        assert_eq!(ok.as_str(), "https://example.com/n8n/webhook/a");
        for bad in [
            "../api/v1/workflows",
            "a/../../x",
            "a?x=1",
            "a#f",
            "",
            "%2e%2e",
        ] {
            assert!(
                webhook_url("https://n8n.example.com", bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn header_placeholders_are_filled() {
        let template = json!({"x-call": "{{call_id}}", "x-trace": "t={{trace_id}};e={{execution_id}}", "x-n": 5});
        let vars = [
            ("call_id", "C1".to_owned()),
            ("trace_id", "T1".to_owned()),
            ("execution_id", "E1".to_owned()),
        ];
        let headers = render_headers(Some(&template), &vars).expect("headers");
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(find("x-call").as_deref(), Some("C1"));
        assert_eq!(find("x-trace").as_deref(), Some("t=T1;e=E1"));
        assert_eq!(find("x-n").as_deref(), Some("5"));
        assert!(render_headers(Some(&json!({"bad header": "x"})), &vars).is_err());
        for framing in ["Host", "content-length", "Transfer-Encoding", "connection"] {
            assert!(
                render_headers(Some(&json!({framing: "x"})), &vars).is_err(),
                "{framing} rendered"
            );
        }
    }
}
