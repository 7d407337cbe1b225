//! One attempt of one delivery: read what to send, sign it (Standard
//! Webhooks 1.0), POST it through the SSRF-guarded client, and record the
//! attempt with what comes next (delivered, another attempt at its time,
//! or failed) in one statement, only while the lease is still ours.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use shared::crypto::{Sealed, SecretBox};
use shared::webhooks::{self, AttemptOutcome, DueDelivery, RetrySchedule};
use sqlx::PgPool;
use uuid::Uuid;

use crate::outbound::Outbound;

/// What the attempts depend on.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub schedule: RetrySchedule,
    pub timeout: Duration,
    /// An endpoint whose attempts have all failed for this long is disabled.
    pub disable_after: Duration,
    /// `RECORDINGS_EXPOSE_URL`: `call.recording_ready` carries the URL.
    pub expose_recording_url: bool,
}

pub struct Deliverer {
    pub pool: PgPool,
    pub outbound: Outbound,
    pub secrets: SecretBox,
    pub settings: DeliverySettings,
}

/// A delivery under `lease`, still pending, with what its attempt needs:
/// for the test route (the api names only the delivery) and for a message
/// NATS delivered again (its attempt may have been made already).
static LEASED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM webhook_deliveries d {}
         WHERE d.id = $1 AND d.tenant_id = $2 AND d.lease = $3 AND d.status = 'pending'",
        webhooks::DUE_DELIVERY_COLUMNS,
        webhooks::DUE_DELIVERY_JOINS
    )
});

/// Records the attempt and what comes next, only under our lease; moves the
/// endpoint's failure clock (and disables it once failing for long enough,
/// with an audit entry) only when its state changes, so the endpoint's row
/// is not written on every attempt.
///
/// The commit does not wait for the WAL flush: the event itself was
/// committed with its change, and a record a crash loses leaves the
/// delivery due again when its lease runs out, so it is sent again with the
/// same `webhook-id` (at least once), never lost.
const RECORD: &str = "
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS sc),
d AS (
    UPDATE webhook_deliveries SET
        attempts = attempts + 1,
        status = $4,
        next_attempt_at = CASE WHEN $4 = 'pending' THEN now() + make_interval(secs => $5) ELSE next_attempt_at END,
        last_attempt_at = $6,
        lease = NULL,
        updated_at = now()
    WHERE id = $1 AND tenant_id = $2 AND lease = $3 AND status = 'pending'
    RETURNING id, tenant_id, endpoint_id
), a AS (
    INSERT INTO webhook_attempts (id, tenant_id, delivery_id, attempted_at, http_status, error, latency_ms)
    SELECT $7, tenant_id, id, $6, $8, $9, $10 FROM d
), e AS (
    UPDATE webhook_endpoints SET
        failing_since = CASE WHEN $11 THEN NULL ELSE COALESCE(failing_since, $6) END,
        disabled = COALESCE(NOT $11 AND failing_since < now() - make_interval(secs => $12), false),
        disabled_reason = CASE WHEN NOT $11 AND failing_since < now() - make_interval(secs => $12)
                               THEN 'every attempt failed since ' || failing_since
                               ELSE disabled_reason END,
        updated_at = now()
    WHERE id = (SELECT endpoint_id FROM d) AND tenant_id = $2 AND NOT disabled
      AND CASE WHEN $11 THEN failing_since IS NOT NULL
               ELSE failing_since IS NULL OR failing_since < now() - make_interval(secs => $12) END
    RETURNING id, failing_since, disabled AS disabled_now
), audit AS (
    INSERT INTO audit_log (id, tenant_id, actor, action, target_type, target_id, details)
    SELECT gen_random_uuid(), $2, 'automation-worker', 'webhook_endpoint.disable', 'webhook_endpoint',
           e.id::text, jsonb_build_object('failing_since', e.failing_since)
    FROM e WHERE e.disabled_now
)
SELECT (SELECT count(*) FROM d) FROM cfg";

/// How an attempt ended, before it is recorded.
#[derive(Debug)]
struct Sent {
    http_status: Option<u16>,
    error: Option<String>,
    /// Worth another attempt (timeout, connection, 408/409/429, 5xx).
    retryable: bool,
    /// The endpoint asked for this much time before the next attempt.
    retry_after: Option<Duration>,
}

impl Deliverer {
    /// The delivery under `lease`, if it is still ours and pending.
    pub async fn leased(
        &self,
        delivery_id: Uuid,
        tenant_id: Uuid,
        lease: Uuid,
    ) -> Result<Option<DueDelivery>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(LEASED.as_str()))
            .bind(delivery_id)
            .bind(tenant_id)
            .bind(lease)
            .fetch_optional(&self.pool)
            .await
    }

    /// Makes the attempt of `due` and records it; `None` when the lease was
    /// no longer ours by then (the delivery was handed on).
    pub async fn attempt(&self, due: &DueDelivery) -> anyhow::Result<Option<AttemptOutcome>> {
        let attempted_at = Utc::now();
        let started = Instant::now();
        let sent = if due.disabled {
            Sent {
                http_status: None,
                error: Some("the endpoint is disabled".into()),
                retryable: false,
                retry_after: None,
            }
        } else {
            self.send(due).await
        };
        let latency = started.elapsed();
        let delivered = sent.error.is_none();
        let attempts_made = usize::try_from(due.attempts).unwrap_or(0) + 1;
        let next = if delivered || !sent.retryable {
            None
        } else {
            self.settings
                .schedule
                .next_delay(attempts_made)
                .map(|delay| delay.max(sent.retry_after.unwrap_or_default()))
        };
        let status = match (delivered, next) {
            (true, _) => "succeeded",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let recorded: i64 = sqlx::query_scalar(RECORD)
            .bind(due.delivery_id)
            .bind(due.tenant_id)
            .bind(due.lease)
            .bind(status)
            .bind(next.unwrap_or_default().as_secs_f64())
            .bind(attempted_at)
            .bind(Uuid::now_v7())
            .bind(sent.http_status.map(i32::from))
            .bind(sent.error.as_deref().map(|e| truncate(e, 500)))
            .bind(i32::try_from(latency.as_millis()).unwrap_or(i32::MAX))
            .bind(delivered)
            .bind(self.settings.disable_after.as_secs_f64())
            .fetch_one(&self.pool)
            .await?;
        if recorded == 0 {
            // The lease ran out during the attempt and the delivery was
            // handed on: the next holder records its own attempt.
            tracing::warn!(delivery_id = %due.delivery_id, "webhook attempt made after its lease ran out");
            return Ok(None);
        }
        metrics::histogram!("webhook_attempt_seconds").record(latency.as_secs_f64());
        metrics::counter!("webhook_attempts_total", "outcome" => status).increment(1);
        if status != "pending" {
            metrics::counter!("webhook_deliveries_total", "outcome" => status).increment(1);
        }
        Ok(Some(AttemptOutcome {
            delivered,
            http_status: sent.http_status,
            error: sent.error,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            delivery_status: status.to_owned(),
        }))
    }

    async fn send(&self, row: &DueDelivery) -> Sent {
        let failed = |error: String, retryable: bool| Sent {
            http_status: None,
            error: Some(error),
            retryable,
            retry_after: None,
        };
        let url = match self.outbound.checked_url(&row.url) {
            Ok(url) => url,
            // A refused address or scheme stays refused: no retry.
            Err(failure) => return failed(failure.message, false),
        };
        let secrets = match self.open_secrets(row) {
            Ok(secrets) => secrets,
            Err(err) => {
                tracing::error!(endpoint_id = %row.endpoint_id, error = %err, "cannot open the endpoint's signing secret");
                return failed("the signing secret cannot be opened".into(), true);
            }
        };
        let body = webhooks::body(&row.event_type, row.recorded_at, &self.data(row).await);
        let msg_id = webhooks::message_id(row.message_id);
        let timestamp = Utc::now().timestamp();
        let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let signature = match webhooks::signature_header(&secret_refs, &msg_id, timestamp, &body) {
            Ok(signature) => signature,
            Err(err) => return failed(err.to_string(), false),
        };
        let request = self
            .outbound
            .client()
            .post(url)
            .timeout(self.settings.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                // The answer's body is not kept; reading a little of it lets
                // the connection be reused.
                let _ = tokio::time::timeout(Duration::from_secs(1), response.bytes()).await;
                if status.is_success() {
                    Sent {
                        http_status: Some(status.as_u16()),
                        error: None,
                        retryable: false,
                        retry_after: None,
                    }
                } else {
                    Sent {
                        http_status: Some(status.as_u16()),
                        error: Some(format!("the endpoint answered {status}")),
                        retryable: webhooks::status_is_retryable(status.as_u16()),
                        retry_after,
                    }
                }
            }
            Err(err) => {
                let failure = crate::outbound::classify(&err);
                let retryable = !matches!(
                    failure.kind,
                    shared::automation::FailureKind::AddressRefused
                        | shared::automation::FailureKind::InvalidUrl
                );
                failed(failure.message, retryable)
            }
        }
    }

    /// The current secret, and the one before a rotation while it still signs.
    fn open_secrets(&self, row: &DueDelivery) -> anyhow::Result<Vec<String>> {
        let aad = webhooks::secret_aad(row.tenant_id, row.endpoint_id);
        let mut sealed = vec![Sealed {
            ciphertext: row.secret_ciphertext.clone(),
            nonce: row.secret_nonce.clone(),
            key_id: row.secret_key_id.clone(),
        }];
        if let (Some(ciphertext), Some(nonce), Some(key_id)) = (
            &row.previous_secret_ciphertext,
            &row.previous_secret_nonce,
            &row.previous_secret_key_id,
        ) {
            sealed.push(Sealed {
                ciphertext: ciphertext.clone(),
                nonce: nonce.clone(),
                key_id: key_id.clone(),
            });
        }
        sealed
            .iter()
            .map(|s| Ok(String::from_utf8(self.secrets.open(s, &aad)?)?))
            .collect()
    }

    /// The event's data as sent: a recording's URL is added where the
    /// deployment exposes recording URLs (the record never holds it).
    async fn data(&self, row: &DueDelivery) -> serde_json::Value {
        let mut data = row.data.clone();
        if self.settings.expose_recording_url && row.event_type == webhooks::RECORDING_READY_EVENT {
            let recording = data
                .get("recording_id")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<Uuid>().ok());
            // The delivery's own tenant scopes the lookup, not the data.
            if let Some(recording) = recording {
                let url: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT url FROM recordings WHERE id = $1 AND tenant_id = $2",
                )
                .bind(recording)
                .bind(row.tenant_id)
                .fetch_optional(&self.pool)
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "cannot read the recording's URL");
                    None
                });
                if let Some(object) = data.as_object_mut() {
                    object.insert("url".into(), url.flatten().into());
                }
            }
        }
        data
    }
}

/// `Retry-After` as seconds or an HTTP date, at most a day.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default()
    };
    Some(wait.min(Duration::from_secs(24 * 3600)))
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_caps_at_a_day() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("999999"),
            Some(Duration::from_secs(24 * 3600))
        );
        let in_a_minute = (Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
        let wait = parse_retry_after(&in_a_minute).expect("date");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
