//! `automation.integration.test`: is an n8n instance reachable with these
//! settings? `GET <base_url>/healthz` with the configured auth, per-attempt
//! timeout, bounded retries, and the reason when it is not.

use std::time::Duration;

use shared::automation::{FailureKind, IntegrationTestReply, IntegrationTestRequest, ProbeFailure};
use shared::crypto::SecretBox;
use tokio::time::Instant;

use crate::outbound::{Auth, Outbound, open_integration_secret};

/// What the probe may read of an answer (the body is not needed).
const PROBE_BODY_BYTES: usize = 4096;

pub struct ProbeSettings {
    pub timeout: Duration,
    pub retries: u32,
}

pub async fn probe(
    outbound: &Outbound,
    secrets: &SecretBox,
    settings: &ProbeSettings,
    req: IntegrationTestRequest,
) -> IntegrationTestReply {
    let started = Instant::now();
    let result = run(outbound, secrets, settings, &req, started).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(attempts) => IntegrationTestReply {
            reachable: true,
            attempts,
            latency_ms,
            failure: None,
        },
        Err((attempts, failure)) => IntegrationTestReply {
            reachable: false,
            attempts,
            latency_ms,
            failure: Some(failure),
        },
    }
}

async fn run(
    outbound: &Outbound,
    secrets: &SecretBox,
    settings: &ProbeSettings,
    req: &IntegrationTestRequest,
    started: Instant,
) -> Result<u32, (u32, ProbeFailure)> {
    let base = req.base_url.trim_end_matches('/');
    let url = outbound
        .checked_url(&format!("{base}/healthz"))
        .map_err(|f| (0, f))?;
    let secret = req
        .secret
        .as_ref()
        .map(|sealed| {
            open_integration_secret(
                secrets,
                &sealed.clone().into(),
                req.tenant_id,
                req.integration_id,
            )
        })
        .transpose()
        .map_err(|f| (0, f))?;
    let auth = Auth::new(req.auth_type, req.header_name.as_deref(), secret).map_err(|f| (0, f))?;
    // Every attempt plus the backoffs between them, with room to spare.
    let deadline = started
        + settings.timeout * (settings.retries + 1)
        + outbound.backoff.max * settings.retries;
    let outcome = outbound
        .call_with_retries(
            settings.retries,
            settings.timeout,
            deadline,
            PROBE_BODY_BYTES,
            || auth.apply(outbound.client().get(url.clone())),
        )
        .await;
    match outcome.result {
        Ok(answer) if answer.status.is_success() => Ok(outcome.attempts),
        Ok(answer) => {
            let status = answer.status.as_u16();
            let message = match status {
                401 | 403 => format!("n8n refused the credentials (HTTP {status})"),
                404 => format!("no n8n health endpoint at {base}/healthz (HTTP 404)"),
                _ => format!("n8n answered HTTP {status}"),
            };
            Err((
                outcome.attempts,
                ProbeFailure {
                    kind: FailureKind::HttpStatus,
                    message,
                    http_status: Some(status),
                },
            ))
        }
        Err(failure) => Err((outcome.attempts, failure)),
    }
}
