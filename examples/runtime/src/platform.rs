//! The HTTP half of the runtime's contract: the api calls a runtime makes,
//! each with its runtime token (role `runtime`, of the tenant it serves;
//! `/internal/dev/token` mints one in development). The api's
//! `/openapi.json` describes each call in full.

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::automation::ToolExecuteReply;
use url::Url;
use uuid::Uuid;

/// Why an api call did not give an answer the runtime can act on.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Network trouble or a 5xx: worth trying again later.
    #[error("api unavailable: {0}")]
    Unavailable(String),
    /// Any other answer: retrying the same request will not help.
    #[error("api answered {status}: {body}")]
    Refused { status: u16, body: String },
}

impl PlatformError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// `GET /auth/me`: whose token this is.
#[derive(Debug, Deserialize)]
pub struct WhoAmI {
    pub sub: String,
    pub tenant_id: Uuid,
}

/// The 200 of `POST /internal/runtime/dispatches/claim`. No `Debug`: it
/// holds the join token, which must never reach a log line.
#[derive(Deserialize)]
pub struct ClaimedDispatch {
    pub dispatch_id: Uuid,
    pub call_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub agent_version_id: Option<Uuid>,
    /// What a real runtime presents to the media stream to join the call.
    pub join_token: String,
}

/// What the claim decided.
pub enum Claim {
    /// This runtime has the call.
    Won(ClaimedDispatch),
    /// 409: another runtime (or an earlier delivery) has it.
    AlreadyClaimed,
    /// 410: the dispatch expired before anyone claimed it.
    Expired,
    /// 404: not a dispatch of this token's tenant.
    Unknown,
}

/// One tool of `GET /internal/automation/tools/catalog`.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogTool {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// The tool's JSON Schema: an LLM function's `parameters`.
    pub input_schema: Value,
}

#[derive(Debug, Deserialize)]
struct Catalog {
    tools: Vec<CatalogTool>,
}

/// The api, as one runtime token sees it.
#[derive(Clone)]
pub struct PlatformApi {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl PlatformApi {
    pub fn new(base: Url, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()?;
        Ok(Self { http, base, token })
    }

    fn url(&self, path: &str) -> Result<Url, PlatformError> {
        self.base.join(path).map_err(|e| PlatformError::Refused {
            status: 0,
            body: format!("bad api URL: {e}"),
        })
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, String), PlatformError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| PlatformError::Unavailable(e.to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| PlatformError::Unavailable(e.to_string()))?;
        if status.is_server_error() && status != StatusCode::BAD_GATEWAY {
            return Err(PlatformError::Unavailable(format!("{status}: {body}")));
        }
        Ok((status, body))
    }

    fn parse<T: serde::de::DeserializeOwned>(
        status: StatusCode,
        body: &str,
    ) -> Result<T, PlatformError> {
        serde_json::from_str(body).map_err(|e| PlatformError::Refused {
            status: status.as_u16(),
            body: format!("unexpected body ({e}): {body}"),
        })
    }

    pub async fn who_am_i(&self) -> Result<WhoAmI, PlatformError> {
        let (status, body) = self.send(self.http.get(self.url("/auth/me")?)).await?;
        if status != StatusCode::OK {
            return Err(PlatformError::Refused {
                status: status.as_u16(),
                body,
            });
        }
        Self::parse(status, &body)
    }

    /// `POST /internal/runtime/dispatches/claim`: exactly one claim of a
    /// dispatch wins; the winner gets the join token, once.
    pub async fn claim(&self, dispatch_id: Uuid) -> Result<Claim, PlatformError> {
        let request = self
            .http
            .post(self.url("/internal/runtime/dispatches/claim")?)
            .json(&json!({"dispatch_id": dispatch_id}));
        let (status, body) = self.send(request).await?;
        match status {
            StatusCode::OK => Ok(Claim::Won(Self::parse(status, &body)?)),
            StatusCode::CONFLICT => Ok(Claim::AlreadyClaimed),
            StatusCode::GONE => Ok(Claim::Expired),
            StatusCode::NOT_FOUND => Ok(Claim::Unknown),
            _ => Err(PlatformError::Refused {
                status: status.as_u16(),
                body,
            }),
        }
    }

    /// `GET /internal/automation/tools/catalog?call_id=`: the tools this
    /// call's agent may use, shaped as LLM function definitions.
    pub async fn tool_catalog(&self, call_id: Uuid) -> Result<Vec<CatalogTool>, PlatformError> {
        let mut url = self.url("/internal/automation/tools/catalog")?;
        url.query_pairs_mut()
            .append_pair("call_id", &call_id.to_string());
        let (status, body) = self.send(self.http.get(url)).await?;
        if status != StatusCode::OK {
            return Err(PlatformError::Refused {
                status: status.as_u16(),
                body,
            });
        }
        Ok(Self::parse::<Catalog>(status, &body)?.tools)
    }

    /// `POST /internal/automation/tools/{id}/execute`: runs the tool through
    /// the automation gateway (n8n) and answers with its outcome. A failed
    /// tool (502) is an outcome too: the conversation goes on without it.
    pub async fn execute_tool(
        &self,
        tool_id: Uuid,
        call_id: Uuid,
        input: &Value,
    ) -> Result<ToolExecuteReply, PlatformError> {
        let request = self
            .http
            .post(self.url(&format!("/internal/automation/tools/{tool_id}/execute"))?)
            .json(&json!({"call_id": call_id, "input_json": input}));
        let (status, body) = self.send(request).await?;
        match status {
            StatusCode::OK | StatusCode::BAD_GATEWAY => Self::parse(status, &body),
            _ => Err(PlatformError::Refused {
                status: status.as_u16(),
                body,
            }),
        }
    }
}
