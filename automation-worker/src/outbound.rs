//! The HTTP client that talks to n8n: SSRF-guarded, no redirects, auth from
//! the integration, per-attempt timeouts, bounded retries with jittered
//! exponential backoff inside a whole-call deadline, and failures classified
//! into [`FailureKind`]s.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use shared::automation::{
    AuthType, FailureKind, ProbeFailure, integration_secret_aad, tool_endpoint_headers_aad,
};
use shared::crypto::{Sealed, SecretBox};
use tokio::time::Instant;
use url::Url;
use uuid::Uuid;

use crate::ssrf::{self, GuardedResolver, Policy, Refusal};

/// Never put "bot" here: n8n answers 204 to bot-like user agents.
const USER_AGENT: &str = concat!("voice-control-plane-automation/", env!("CARGO_PKG_VERSION"));

/// How a request authenticates to n8n. The secret lives only in here and in
/// the header values built from it (marked sensitive).
#[derive(Clone)]
pub enum Auth {
    None,
    Header { name: HeaderName, value: String },
    Basic { user: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.write_str(match self {
            Auth::None => "Auth::None",
            Auth::Header { .. } => "Auth::Header(<redacted>)",
            Auth::Basic { .. } => "Auth::Basic(<redacted>)",
            Auth::Bearer(_) => "Auth::Bearer(<redacted>)",
        })
    }
}

/// Opens an integration's sealed secret (bound to its tenant and
/// integration id) as text, for [`Auth::new`]: the one place a worker
/// decrypts one.
pub fn open_integration_secret(
    secrets: &SecretBox,
    sealed: &Sealed,
    tenant_id: Uuid,
    integration_id: Uuid,
) -> Result<String, ProbeFailure> {
    let failure = |message: String| ProbeFailure {
        kind: FailureKind::Secret,
        message,
        http_status: None,
    };
    let plain = secrets
        .open(sealed, &integration_secret_aad(tenant_id, integration_id))
        .map_err(|e| failure(e.to_string()))?;
    String::from_utf8(plain).map_err(|_| failure("the secret is not UTF-8".into()))
}

/// Opens an endpoint's sealed header values (bound to its tenant, tool and
/// integration): the JSON object of header name to template value that the
/// api validated and sealed.
pub fn open_endpoint_headers(
    secrets: &SecretBox,
    sealed: &Sealed,
    tenant_id: Uuid,
    tool_id: Uuid,
    integration_id: Uuid,
) -> Result<serde_json::Value, ProbeFailure> {
    let failure = |message: String| ProbeFailure {
        kind: FailureKind::Secret,
        message,
        http_status: None,
    };
    let plain = secrets
        .open(
            sealed,
            &tool_endpoint_headers_aad(tenant_id, tool_id, integration_id),
        )
        .map_err(|e| failure(format!("the endpoint's header values: {e}")))?;
    serde_json::from_slice::<serde_json::Value>(&plain)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| failure("the endpoint's header values are not a JSON object".into()))
}

impl Auth {
    /// Builds the auth from an integration's settings and its opened secret.
    pub fn new(
        auth_type: AuthType,
        header_name: Option<&str>,
        secret: Option<String>,
    ) -> Result<Self, ProbeFailure> {
        let invalid = |message: &str| ProbeFailure {
            kind: FailureKind::Secret,
            message: message.to_owned(),
            http_status: None,
        };
        match auth_type {
            AuthType::None => Ok(Auth::None),
            AuthType::Header => {
                let name = header_name
                    .and_then(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                    .ok_or_else(|| invalid("header_name is missing or not a valid header name"))?;
                let value = secret.ok_or_else(|| invalid("the header auth needs a secret"))?;
                Ok(Auth::Header { name, value })
            }
            AuthType::Basic => {
                let secret = secret.ok_or_else(|| invalid("basic auth needs a secret"))?;
                let (user, password) = secret
                    .split_once(':')
                    .ok_or_else(|| invalid("a basic auth secret is user:password"))?;
                Ok(Auth::Basic {
                    user: user.to_owned(),
                    password: password.to_owned(),
                })
            }
            AuthType::Bearer => Ok(Auth::Bearer(
                secret.ok_or_else(|| invalid("bearer auth needs a secret"))?,
            )),
        }
    }

    pub fn apply(&self, req: RequestBuilder) -> Result<RequestBuilder, ProbeFailure> {
        Ok(match self {
            Auth::None => req,
            Auth::Header { name, value } => {
                let mut value = HeaderValue::from_str(value).map_err(|_| ProbeFailure {
                    kind: FailureKind::Secret,
                    message: "the header secret is not a valid header value".into(),
                    http_status: None,
                })?;
                value.set_sensitive(true);
                req.header(name.clone(), value)
            }
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        })
    }
}

/// An HTTP answer, its body read up to a limit.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// The body was longer than the limit and was cut.
    pub truncated: bool,
}

/// The outcome of a call with retries.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Answer, ProbeFailure>,
    pub attempts: u32,
    /// The whole-call deadline cut the last attempt short or stopped retries.
    pub deadline_hit: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `retry` (1-based): exponential, capped,
    /// with "equal jitter" (half fixed, half random) so retries of many
    /// executions do not hit n8n in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max);
        let half = exp / 2;
        let jitter = rand::random_range(0.0..=1.0);
        half + half.mul_f64(jitter)
    }
}

#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    pub policy: Policy,
    pub backoff: Backoff,
}

impl Outbound {
    pub fn new(policy: Policy, backoff: Backoff) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .redirect(reqwest::redirect::Policy::none())
            .https_only(policy.https_only)
            .no_proxy()
            .retry(reqwest::retry::never())
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            policy,
            backoff,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Parses and checks a URL (scheme, credentials, literal IPs).
    pub fn checked_url(&self, url: &str) -> Result<Url, ProbeFailure> {
        let parsed = Url::parse(url).map_err(|e| ProbeFailure {
            kind: FailureKind::InvalidUrl,
            message: format!("invalid URL: {e}"),
            http_status: None,
        })?;
        ssrf::check_url(&self.policy, &parsed).map_err(refusal_failure)?;
        Ok(parsed)
    }

    /// Sends what `build` makes, retrying connect errors, timeouts, 429 and
    /// 5xx up to `max_retries` times, each attempt bounded by `per_attempt`
    /// and all of them by `deadline`.
    pub async fn call_with_retries(
        &self,
        max_retries: u32,
        per_attempt: Duration,
        deadline: Instant,
        max_body: usize,
        build: impl Fn() -> Result<RequestBuilder, ProbeFailure>,
    ) -> Outcome {
        let mut attempts = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Outcome {
                    result: Err(deadline_failure()),
                    attempts,
                    deadline_hit: true,
                };
            }
            attempts += 1;
            let timeout = per_attempt.min(remaining);
            let cut_by_deadline = timeout < per_attempt;
            let result = match build() {
                Ok(req) => send_once(req, timeout, max_body).await,
                Err(failure) => Err(failure),
            };
            let retryable = match &result {
                Ok(answer) => {
                    answer.status == StatusCode::TOO_MANY_REQUESTS
                        || answer.status.is_server_error()
                }
                Err(f) => matches!(
                    f.kind,
                    FailureKind::Connect | FailureKind::Timeout | FailureKind::Dns
                ),
            };
            let timed_out = matches!(&result, Err(f) if f.kind == FailureKind::Timeout);
            if !retryable || attempts > max_retries {
                return Outcome {
                    result,
                    attempts,
                    deadline_hit: timed_out && cut_by_deadline,
                };
            }
            let delay = self.backoff.delay(attempts);
            // A retry that could not even start before the deadline is not
            // worth waiting for: answer now with the last outcome.
            if Instant::now() + delay + Duration::from_millis(10) >= deadline {
                return Outcome {
                    result,
                    attempts,
                    deadline_hit: true,
                };
            }
            tokio::time::sleep(delay).await;
        }
    }
}

fn deadline_failure() -> ProbeFailure {
    ProbeFailure {
        kind: FailureKind::Timeout,
        message: "the whole-call deadline passed".into(),
        http_status: None,
    }
}

/// One request, its body read up to `max_body` bytes, within `timeout`.
async fn send_once(
    req: RequestBuilder,
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, ProbeFailure> {
    let attempt = async {
        let mut resp = req.send().await.map_err(|e| classify(&e))?;
        let status = resp.status();
        let mut body = BytesMut::new();
        let mut truncated = false;
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e))? {
            if body.len() + chunk.len() > max_body {
                let room = max_body - body.len();
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            body: body.freeze(),
            truncated,
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure {
            kind: FailureKind::Timeout,
            message: format!("no answer within {} ms", timeout.as_millis()),
            http_status: None,
        }),
    }
}

pub fn refusal_failure(refusal: Refusal) -> ProbeFailure {
    let kind = match refusal {
        Refusal::InvalidUrl(_) => FailureKind::InvalidUrl,
        Refusal::Address { .. } => FailureKind::AddressRefused,
        Refusal::Dns { .. } => FailureKind::Dns,
    };
    ProbeFailure {
        kind,
        message: refusal.to_string(),
        http_status: None,
    }
}

/// Classifies a reqwest error by walking its causes.
pub fn classify(err: &reqwest::Error) -> ProbeFailure {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return refusal_failure(refusal.clone());
        }
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return failure(FailureKind::Tls, format!("TLS error: {cause}"));
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && inner.downcast_ref::<rustls::Error>().is_some()
        {
            return failure(FailureKind::Tls, format!("TLS error: {inner}"));
        }
        source = cause.source();
    }
    let message = error_chain(err);
    if err.is_timeout() {
        failure(FailureKind::Timeout, message)
    } else if err.is_connect() {
        failure(FailureKind::Connect, message)
    } else {
        failure(FailureKind::Other, message)
    }
}

fn failure(kind: FailureKind, message: String) -> ProbeFailure {
    ProbeFailure {
        kind,
        message,
        http_status: None,
    }
}

/// The error and its causes, with the request's URL cut to its origin: a
/// webhook path can be the only secret of an n8n workflow, and this message
/// is stored and shown to the tenant's staff.
fn error_chain(err: &reqwest::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(url) = err.url() {
        let origin = url.origin().ascii_serialization();
        message = message.replace(url.as_str(), &format!("{origin}/…"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_headers_open_only_as_a_json_object_under_their_binding() {
        let secrets = SecretBox::new(&[7; 32]);
        let (tenant, tool, integration) =
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let aad = tool_endpoint_headers_aad(tenant, tool, integration);
        let sealed = secrets
            .seal(br#"{"authorization":"Bearer t"}"#, &aad)
            .expect("seal");
        let opened =
            open_endpoint_headers(&secrets, &sealed, tenant, tool, integration).expect("opens");
        assert_eq!(opened, serde_json::json!({"authorization": "Bearer t"}));
        for (t, o, i) in [
            (tool, tool, integration),
            (tenant, tenant, integration),
            (tenant, tool, tool),
        ] {
            let failure =
                open_endpoint_headers(&secrets, &sealed, t, o, i).expect_err("another row");
            assert_eq!(failure.kind, FailureKind::Secret);
        }
        let not_an_object = secrets.seal(b"[1]", &aad).expect("seal");
        let failure = open_endpoint_headers(&secrets, &not_an_object, tenant, tool, integration)
            .expect_err("not an object");
        assert_eq!(failure.kind, FailureKind::Secret);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d10 = b.delay(10);
            assert!(d10 <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn refusals_map_to_stable_reasons() {
        use std::net::{IpAddr, Ipv4Addr};
        let dns = refusal_failure(Refusal::Dns {
            host: "n8n.example.com".into(),
            message: "no addresses".into(),
        });
        assert_eq!(dns.kind, FailureKind::Dns);
        let refused = refusal_failure(Refusal::Address {
            host: "evil.example.com".into(),
            ip: IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        });
        assert_eq!(refused.kind, FailureKind::AddressRefused);
        // The tenant learns which name was refused, not where it points.
        assert!(refused.message.contains("evil.example.com"));
        assert!(!refused.message.contains("169.254.169.254"));
        assert_eq!(
            refusal_failure(Refusal::InvalidUrl("x".into())).kind,
            FailureKind::InvalidUrl
        );
    }

    #[tokio::test]
    async fn a_refused_name_is_classified_before_any_connection() {
        // `localhost` resolves from /etc/hosts: no traffic leaves the machine,
        // and the refusal comes from the resolver, inside reqwest.
        let outbound = Outbound::new(
            Policy {
                allow_private: false,
                https_only: false,
            },
            Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
        )
        .expect("client");
        let err = outbound
            .client()
            .get("http://localhost:9/healthz")
            .send()
            .await
            .expect_err("refused");
        assert_eq!(classify(&err).kind, FailureKind::AddressRefused);
    }

    #[test]
    fn auth_debug_never_shows_the_secret() {
        let auth = Auth::new(AuthType::Bearer, None, Some("s3cr3t".into())).expect("auth");
        assert!(!format!("{auth:?}").contains("s3cr3t"));
        assert!(Auth::new(AuthType::Basic, None, Some("nocolon".into())).is_err());
        assert!(Auth::new(AuthType::Header, None, Some("x".into())).is_err());
    }
}
