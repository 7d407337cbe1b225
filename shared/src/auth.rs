//! JWT auth: claims, roles, token issuing and verification, and the axum
//! extractors that guard routes.
//!
//! Tokens are HS256 only (the algorithm is pinned: a token whose header says
//! anything else, `none` included, is refused), and `iss`, `aud` and `exp`
//! are required and checked with a small leeway.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::error_response;

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECONDS: u64 = 30;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    InternalAdmin,
    InternalOperator,
    ClientViewer,
    /// A voice runtime's token: claims dispatches and runs tools for its
    /// tenant's calls, nothing else. A token role, never a user's
    /// membership.
    Runtime,
}

impl Role {
    pub fn is_internal(self) -> bool {
        matches!(self, Role::InternalAdmin | Role::InternalOperator)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::InternalAdmin => "internal_admin",
            Role::InternalOperator => "internal_operator",
            Role::ClientViewer => "client_viewer",
            Role::Runtime => "runtime",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id, or the name of a service principal.
    pub sub: String,
    pub tenant_id: Uuid,
    pub role: Role,
    pub is_internal: bool,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    /// Ops staff: an internal role on a token marked internal (either
    /// alone is not enough).
    pub fn is_internal_staff(&self) -> bool {
        self.is_internal && self.role.is_internal()
    }
}

/// Signing and verification keys plus the pinned validation rules.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot sign token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("token lifetime is out of range")]
    Lifetime,
}

impl JwtKeys {
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// Issues a token valid for `ttl`.
    pub fn issue(
        &self,
        sub: &str,
        tenant_id: Uuid,
        role: Role,
        is_internal: bool,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(ttl.as_secs()).map_err(|_| TokenError::Lifetime)?;
        let claims = Claims {
            sub: sub.to_owned(),
            tenant_id,
            role,
            is_internal,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now.checked_add(ttl).ok_or(TokenError::Lifetime)?,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies signature, algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match err.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidIssuer => "wrong token issuer",
                    ErrorKind::InvalidAudience => "wrong token audience",
                    ErrorKind::InvalidAlgorithm => "token algorithm not allowed",
                    ErrorKind::InvalidSignature => "bad token signature",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                    _ => "malformed token",
                };
                AuthError::InvalidToken(reason)
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            AuthError::MissingToken => error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token",
            ),
            AuthError::InvalidToken(reason) => {
                error_response(StatusCode::UNAUTHORIZED, "unauthorized", reason)
            }
            AuthError::Forbidden(reason) => {
                error_response(StatusCode::FORBIDDEN, "forbidden", reason)
            }
        }
    }
}

fn bearer_claims<S>(parts: &Parts, state: &S) -> Result<Claims, AuthError>
where
    Arc<JwtKeys>: FromRef<S>,
{
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingToken)?;
    let value = header
        .to_str()
        .map_err(|_| AuthError::InvalidToken("malformed authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::InvalidToken(
            "authorization must be a Bearer token",
        ))?
        .trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Arc::<JwtKeys>::from_ref(state).verify(token)
}

/// Any valid token (the `/client` surface).
#[derive(Debug, Clone)]
pub struct Principal(pub Claims);

/// A token with `is_internal=true` and an internal role (`/internal`).
#[derive(Debug, Clone)]
pub struct InternalPrincipal(pub Claims);

/// An internal token with the `internal_admin` role.
#[derive(Debug, Clone)]
pub struct AdminPrincipal(pub Claims);

/// What a voice runtime calls (the claim, the tool catalog, tool
/// executions): a `runtime` token, or an internal one (ops staff running a
/// tool by hand).
#[derive(Debug, Clone)]
pub struct RuntimePrincipal(pub Claims);

impl<S> FromRequestParts<S> for Principal
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        bearer_claims(parts, state).map(Principal)
    }
}

impl<S> FromRequestParts<S> for InternalPrincipal
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = bearer_claims(parts, state)?;
        if !claims.is_internal_staff() {
            return Err(AuthError::Forbidden("internal role required"));
        }
        Ok(InternalPrincipal(claims))
    }
}

impl<S> FromRequestParts<S> for RuntimePrincipal
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = bearer_claims(parts, state)?;
        if !claims.is_internal_staff() && claims.role != Role::Runtime {
            return Err(AuthError::Forbidden("runtime or internal role required"));
        }
        Ok(RuntimePrincipal(claims))
    }
}

impl<S> FromRequestParts<S> for AdminPrincipal
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let InternalPrincipal(claims) = InternalPrincipal::from_request_parts(parts, state).await?;
        if claims.role != Role::InternalAdmin {
            return Err(AuthError::Forbidden("internal_admin role required"));
        }
        Ok(AdminPrincipal(claims))
    }
}

impl Claims {
    /// 403 unless `tenant_id` (from a body or query) is the token's tenant.
    pub fn require_tenant(&self, tenant_id: Uuid) -> Result<(), AuthError> {
        if tenant_id == self.tenant_id {
            Ok(())
        } else {
            Err(AuthError::Forbidden("tenant_id is not the token's tenant"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> JwtKeys {
        crate::install_crypto_providers();
        JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss-a", "aud-a")
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let t = Uuid::new_v4();
        let token = k
            .issue(
                "u1",
                t,
                Role::InternalOperator,
                true,
                Duration::from_secs(60),
            )
            .expect("issue");
        let claims = k.verify(&token).expect("verify");
        assert_eq!(claims.tenant_id, t);
        assert_eq!(claims.role, Role::InternalOperator);
        assert_eq!(claims.iss, "iss-a");
    }

    #[test]
    fn refuses_alg_none_and_other_algs() {
        let k = keys();
        let claims = serde_json::json!({"sub":"u","tenant_id":Uuid::nil(),"role":"internal_admin",
            "is_internal":true,"iss":"iss-a","aud":"aud-a","iat":0,"exp":chrono::Utc::now().timestamp()+600});
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","typ":"JWT"})),
            b64(&claims)
        );
        assert!(k.verify(&none).is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .expect("encode");
        assert!(matches!(
            k.verify(&hs512),
            Err(AuthError::InvalidToken("token algorithm not allowed"))
        ));
    }

    #[test]
    fn refuses_wrong_issuer_audience_and_expired() {
        let k = keys();
        let other_iss = JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss-b", "aud-a");
        let other_aud = JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss-a", "aud-b");
        let t = Uuid::nil();
        let ttl = Duration::from_secs(60);
        let tok = other_iss
            .issue("u", t, Role::ClientViewer, false, ttl)
            .expect("issue");
        assert!(matches!(
            k.verify(&tok),
            Err(AuthError::InvalidToken("wrong token issuer"))
        ));
        let tok = other_aud
            .issue("u", t, Role::ClientViewer, false, ttl)
            .expect("issue");
        assert!(matches!(
            k.verify(&tok),
            Err(AuthError::InvalidToken("wrong token audience"))
        ));
        let expired = serde_json::json!({"sub":"u","tenant_id":t,"role":"client_viewer","is_internal":false,
            "iss":"iss-a","aud":"aud-a","iat":0,"exp":chrono::Utc::now().timestamp()-3600});
        let tok = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .expect("encode");
        assert!(matches!(
            k.verify(&tok),
            Err(AuthError::InvalidToken("token expired"))
        ));
    }

    #[test]
    fn refuses_tampered_signature() {
        let k = keys();
        let token = k
            .issue(
                "u1",
                Uuid::nil(),
                Role::ClientViewer,
                false,
                Duration::from_secs(60),
            )
            .expect("issue");
        // Swap the payload for one claiming admin, keep the old signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(
            &serde_json::json!({"sub":"u1","tenant_id":Uuid::nil(),"role":"internal_admin",
            "is_internal":true,"iss":"iss-a","aud":"aud-a","iat":0,"exp":chrono::Utc::now().timestamp()+600}),
        );
        parts[1] = &forged;
        assert!(matches!(
            k.verify(&parts.join(".")),
            Err(AuthError::InvalidToken("bad token signature"))
        ));
    }
}

#[cfg(test)]
mod guard_tests {
    //! The extractors behind a real router: status codes and JSON bodies.
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    #[derive(Clone, axum::extract::FromRef)]
    struct S {
        jwt: Arc<JwtKeys>,
    }

    fn app() -> (Router, Arc<JwtKeys>) {
        crate::install_crypto_providers();
        let jwt = Arc::new(JwtKeys::new(b"0123456789abcdef0123456789abcdef", "i", "a"));
        let router = Router::new()
            .route(
                "/client",
                get(|Principal(c): Principal| async move { c.sub }),
            )
            .route(
                "/internal",
                get(|InternalPrincipal(c): InternalPrincipal| async move { c.sub }),
            )
            .route(
                "/admin",
                get(|AdminPrincipal(c): AdminPrincipal| async move { c.sub }),
            )
            .route(
                "/runtime",
                get(|RuntimePrincipal(c): RuntimePrincipal| async move { c.sub }),
            )
            .with_state(S { jwt: jwt.clone() });
        (router, jwt)
    }

    async fn status(router: &Router, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = Request::builder().uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn guards_map_roles_to_401_and_403() {
        let (router, jwt) = app();
        let ttl = Duration::from_secs(60);
        let t = Uuid::nil();
        let admin = jwt
            .issue("admin", t, Role::InternalAdmin, true, ttl)
            .expect("t");
        let operator = jwt
            .issue("op", t, Role::InternalOperator, true, ttl)
            .expect("t");
        let viewer = jwt
            .issue("viewer", t, Role::ClientViewer, false, ttl)
            .expect("t");
        // An internal role without is_internal is not internal.
        let not_flagged = jwt
            .issue("op2", t, Role::InternalOperator, false, ttl)
            .expect("t");
        // is_internal alone does not make a client role internal.
        let flagged_viewer = jwt
            .issue("v2", t, Role::ClientViewer, true, ttl)
            .expect("t");

        let (s, body) = status(&router, "/client", None).await;
        assert_eq!(s, 401);
        assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
        assert_eq!(status(&router, "/client", Some("garbage")).await.0, 401);
        assert_eq!(
            status(&router, "/client", Some(&viewer)).await,
            (200, "viewer".into())
        );
        assert_eq!(status(&router, "/client", Some(&admin)).await.0, 200);

        let (s, body) = status(&router, "/internal", Some(&viewer)).await;
        assert_eq!(s, 403);
        assert!(body.contains("\"code\":\"forbidden\""), "{body}");
        assert_eq!(
            status(&router, "/internal", Some(&not_flagged)).await.0,
            403
        );
        assert_eq!(
            status(&router, "/internal", Some(&flagged_viewer)).await.0,
            403
        );
        assert_eq!(status(&router, "/internal", Some(&operator)).await.0, 200);
        assert_eq!(status(&router, "/internal", Some(&admin)).await.0, 200);

        assert_eq!(status(&router, "/admin", Some(&operator)).await.0, 403);
        assert_eq!(status(&router, "/admin", Some(&viewer)).await.0, 403);
        assert_eq!(status(&router, "/admin", None).await.0, 401);
        assert_eq!(
            status(&router, "/admin", Some(&admin)).await,
            (200, "admin".into())
        );

        // A runtime token reaches the runtime's routes and nothing internal,
        // even flagged internal; internal tokens reach the runtime's too.
        let runtime = jwt.issue("rt", t, Role::Runtime, false, ttl).expect("t");
        let flagged_runtime = jwt.issue("rt2", t, Role::Runtime, true, ttl).expect("t");
        assert_eq!(
            status(&router, "/runtime", Some(&runtime)).await,
            (200, "rt".into())
        );
        assert_eq!(status(&router, "/runtime", Some(&operator)).await.0, 200);
        assert_eq!(status(&router, "/runtime", Some(&viewer)).await.0, 403);
        assert_eq!(status(&router, "/runtime", Some(&not_flagged)).await.0, 403);
        assert_eq!(status(&router, "/runtime", None).await.0, 401);
        assert_eq!(status(&router, "/internal", Some(&runtime)).await.0, 403);
        assert_eq!(
            status(&router, "/internal", Some(&flagged_runtime)).await.0,
            403
        );
        assert_eq!(
            status(&router, "/admin", Some(&flagged_runtime)).await.0,
            403
        );
    }
}

#[cfg(test)]
mod fuzz_tests {
    //! Hostile tokens: whatever arrives in the header, verification returns
    //! an error and never panics or accepts.
    use super::*;
    use proptest::prelude::*;

    fn keys() -> JwtKeys {
        crate::install_crypto_providers();
        JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss-a", "aud-a")
    }

    proptest! {
        #[test]
        fn arbitrary_strings_are_refused(token in ".{0,400}") {
            prop_assert!(keys().verify(&token).is_err());
        }

        #[test]
        fn three_base64ish_segments_are_refused(
            a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,80}"
        ) {
            let token = format!("{a}.{b}.{c}");
            prop_assert!(keys().verify(&token).is_err());
        }

        #[test]
        fn any_single_character_change_breaks_a_valid_token(pos in 0usize..1000, replacement in "[A-Za-z0-9_-]") {
            let k = keys();
            let token = k.issue("u", Uuid::nil(), Role::ClientViewer, false, Duration::from_secs(60)).expect("issue");
            let pos = pos % token.len();
            let mut bytes = token.clone().into_bytes();
            let new = replacement.as_bytes()[0];
            prop_assume!(bytes[pos] != new && bytes[pos] != b'.');
            bytes[pos] = new;
            let forged = String::from_utf8(bytes).expect("ascii");
            // Base64 padding bits can make a change decode to the same bytes;
            // only then may the token still verify, with identical claims.
            match k.verify(&forged) {
                Err(_) => {}
                Ok(claims) => prop_assert_eq!(claims, k.verify(&token).expect("original")),
            }
        }
    }
}
