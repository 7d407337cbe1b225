//! `/auth/*` (first admin, login, bootstrap users) and the development token
//! route `/internal/dev/token`, which does not exist in production.

use std::time::{Duration, Instant};

use crate::audit::{self, AuditEntry};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::{Principal, Role};
use shared::crypto::constant_time_eq;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::client_addr::ClientAddr;
use crate::http::error::{AppError, AppResult};
use crate::http::extract::Json;
use crate::state::{AppState, Settings};

pub fn routes(settings: &Settings) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new()
        .routes(routes!(register_first_admin))
        .routes(routes!(login))
        .routes(routes!(bootstrap_user))
        .routes(routes!(me));
    if settings.is_production {
        // Not merely refused: absent, so it answers like any unknown route.
        router
    } else {
        router.routes(routes!(dev_token))
    }
}

const MIN_PASSWORD_CHARS: usize = 12;
const MAX_PASSWORD_BYTES: usize = 1024;

fn validate_email(email: &str) -> AppResult<String> {
    let email = email.trim();
    let valid = email.len() <= 320
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(email.to_owned())
    } else {
        Err(AppError::bad_request("email is not a valid address"))
    }
}

fn validate_password(password: &str) -> AppResult<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AppError::bad_request(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::bad_request(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

// No Debug: it holds a secret that must never reach a log line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterFirstAdmin {
    pub email: String,
    /// At least 12 characters.
    pub password: String,
    pub tenant_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub id: Uuid,
    pub name: String,
}

// No Debug: it holds a secret that must never reach a log line.
#[derive(Serialize, ToSchema)]
pub struct FirstAdminCreated {
    pub token: String,
    pub user: UserView,
    pub tenant: TenantView,
}

fn hashing_busy() -> AppError {
    AppError::ServiceUnavailable("too many logins in progress; try again shortly".into())
}

async fn hash_password(state: &AppState, password: String) -> AppResult<String> {
    match state.passwords.hash(password).await {
        Ok(hash) => Ok(hash),
        Err(crate::auth::password::PasswordError::Busy) => Err(hashing_busy()),
        Err(err) => Err(anyhow::Error::from(err).into()),
    }
}

async fn users_exist(executor: impl sqlx::PgExecutor<'_>) -> AppResult<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
        .fetch_one(executor)
        .await?)
}

fn admin_exists() -> AppError {
    AppError::Conflict("an admin already exists; log in instead".into())
}

fn throttled(message: &str, wait: Duration) -> AppError {
    AppError::TooManyRequests {
        message: message.into(),
        retry_after_secs: wait.as_secs().saturating_add(1),
    }
}

/// Creates the first tenant and its internal admin; works only while there
/// are no users at all. Once set up it answers 409 without hashing anything,
/// so a loop of these cannot take the hashing slots that logins need.
#[utoipa::path(post, path = "/auth/register-first-admin", tag = "auth",
    request_body = RegisterFirstAdmin,
    responses(
        (status = 201, body = FirstAdminCreated),
        (status = 400, body = shared::error::ErrorBody),
        (status = 409, description = "users already exist", body = shared::error::ErrorBody),
        (status = 429, description = "too many attempts from this address; see Retry-After", body = shared::error::ErrorBody),
        (status = 503, description = "every password-hashing slot stayed busy; try again", body = shared::error::ErrorBody),
    ))]
async fn register_first_admin(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<RegisterFirstAdmin>,
) -> AppResult<(StatusCode, Json<FirstAdminCreated>)> {
    let email = validate_email(&body.email)?;
    validate_password(&body.password)?;
    let tenant_name = body.tenant_name.trim().to_owned();
    if tenant_name.is_empty() || tenant_name.chars().count() > 200 {
        return Err(AppError::bad_request(
            "tenant_name must be 1 to 200 characters",
        ));
    }
    if users_exist(&state.pool).await? {
        return Err(admin_exists());
    }
    state
        .login_throttle
        .begin_registration(ip, Instant::now())
        .map_err(|wait| throttled("too many registration attempts; try again later", wait))?;
    let hash = hash_password(&state, body.password).await?;

    let user_id = Uuid::now_v7();
    let tenant_id = Uuid::now_v7();
    let mut tx = state.pool.begin().await?;
    // Serialises concurrent registrations: the second one sees the first
    // user (checked again now, under the lock) and gets 409.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('auth.register_first_admin'))")
        .execute(&mut *tx)
        .await?;
    if users_exist(&mut *tx).await? {
        return Err(admin_exists());
    }
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(tenant_id)
        .bind(&tenant_name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(&email)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO memberships (user_id, tenant_id, role) VALUES ($1, $2, 'internal_admin')",
    )
    .bind(user_id)
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        AuditEntry {
            actor: &user_id.to_string(),
            tenant_id: Some(tenant_id),
            action: "auth.register_first_admin",
            target_type: "user",
            target_id: Some(user_id.to_string()),
            details: json!({"email": email, "tenant_name": tenant_name}),
        },
    )
    .await?;
    tx.commit().await?;

    let token = state
        .jwt
        .issue(
            &user_id.to_string(),
            tenant_id,
            Role::InternalAdmin,
            true,
            state.settings.jwt_ttl,
        )
        .map_err(anyhow::Error::from)?;
    Ok((
        StatusCode::CREATED,
        Json(FirstAdminCreated {
            token,
            user: UserView { id: user_id, email },
            tenant: TenantView {
                id: tenant_id,
                name: tenant_name,
            },
        }),
    ))
}

// No Debug: it holds a secret that must never reach a log line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
    /// The tenant to log into; the first membership when absent.
    pub tenant_id: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct MembershipView {
    pub tenant_id: Uuid,
    pub role: Role,
}

// No Debug: it holds a secret that must never reach a log line.
#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub memberships: Vec<MembershipView>,
}

/// Email and password login. Unknown email and wrong password get the same
/// 401 and cost the same time.
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = Login,
    responses(
        (status = 200, body = LoginResponse),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, description = "no membership in tenant_id", body = shared::error::ErrorBody),
        (status = 429, description = "too many failed logins; see Retry-After", body = shared::error::ErrorBody),
        (status = 503, description = "every password-hashing slot stayed busy; try again", body = shared::error::ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<Login>,
) -> AppResult<Json<LoginResponse>> {
    let failed = || AppError::Unauthorized("invalid email or password".into());
    // Checked before the throttle, which keeps one entry per email: an
    // over-long address must not cost it memory.
    if body.password.len() > MAX_PASSWORD_BYTES || body.email.len() > 320 {
        return Err(failed());
    }
    // Counted as a failure before the slow password check (a success takes
    // it back), so a burst of concurrent guesses cannot all get past the
    // limit while earlier ones wait for a hashing permit.
    state
        .login_throttle
        .begin_attempt(&body.email, ip, Instant::now())
        .map_err(|wait| throttled("too many failed logins; try again later", wait))?;
    let user: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(email) = lower($1)")
            .bind(body.email.trim())
            .fetch_optional(&state.pool)
            .await?;
    let (user_id, stored) = match user {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    let matched = match state.passwords.verify(body.password, stored).await {
        Ok(matched) => matched,
        Err(crate::auth::password::PasswordError::Busy) => return Err(hashing_busy()),
        Err(err) => return Err(anyhow::Error::from(err).into()),
    };
    let Some(user_id) = user_id.filter(|_| matched) else {
        return Err(failed());
    };
    state.login_throttle.record_success(&body.email, ip);

    let memberships: Vec<MembershipView> = sqlx::query_as(
        "SELECT tenant_id, role FROM memberships WHERE user_id = $1 ORDER BY created_at, tenant_id",
    )
    .bind(user_id)
    .fetch_all(&state.pool)
    .await?;
    let chosen = match body.tenant_id {
        Some(tenant_id) => memberships
            .iter()
            .find(|m| m.tenant_id == tenant_id)
            .ok_or_else(|| AppError::Forbidden("no membership in that tenant".into()))?,
        None => memberships
            .first()
            .ok_or_else(|| AppError::Forbidden("user has no tenant membership".into()))?,
    };
    let token = state
        .jwt
        .issue(
            &user_id.to_string(),
            chosen.tenant_id,
            chosen.role,
            chosen.role.is_internal(),
            state.settings.jwt_ttl,
        )
        .map_err(anyhow::Error::from)?;
    Ok(Json(LoginResponse { token, memberships }))
}

fn require_key(headers: &HeaderMap, header: &str, expected: Option<&str>) -> AppResult<()> {
    let given = headers.get(header).map(|v| v.as_bytes());
    match (given, expected) {
        (Some(given), Some(expected)) if constant_time_eq(given, expected.as_bytes()) => Ok(()),
        _ => Err(AppError::Unauthorized(format!("missing or wrong {header}"))),
    }
}

// No Debug: it holds a secret that must never reach a log line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapUser {
    pub email: String,
    pub password: String,
    pub memberships: Vec<MembershipView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BootstrapUserCreated {
    pub user: UserView,
    pub memberships: Vec<MembershipView>,
}

/// Creates a user with memberships; guarded by `x-auth-bootstrap-key`.
#[utoipa::path(post, path = "/auth/bootstrap/user", tag = "auth",
    request_body = BootstrapUser,
    params(("x-auth-bootstrap-key" = String, Header, description = "AUTH_BOOTSTRAP_KEY")),
    responses(
        (status = 201, body = BootstrapUserCreated),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 404, description = "a membership's tenant does not exist", body = shared::error::ErrorBody),
        (status = 409, description = "email already registered", body = shared::error::ErrorBody),
    ))]
async fn bootstrap_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<BootstrapUser>,
) -> AppResult<(StatusCode, Json<BootstrapUserCreated>)> {
    require_key(
        &headers,
        "x-auth-bootstrap-key",
        state.settings.auth_bootstrap_key.as_deref(),
    )?;
    let email = validate_email(&body.email)?;
    validate_password(&body.password)?;
    if body.memberships.len() > 100 {
        return Err(AppError::bad_request("memberships: at most 100"));
    }
    if body.memberships.iter().any(|m| m.role == Role::Runtime) {
        return Err(AppError::bad_request(
            "memberships: runtime is a token role for voice runtimes, not a user's",
        ));
    }
    let hash = hash_password(&state, body.password).await?;
    let user_id = Uuid::now_v7();
    create_user_with_memberships(&state.pool, user_id, &email, &hash, &body.memberships).await?;
    Ok((
        StatusCode::CREATED,
        Json(BootstrapUserCreated {
            user: UserView { id: user_id, email },
            memberships: body.memberships,
        }),
    ))
}

async fn create_user_with_memberships(
    pool: &PgPool,
    user_id: Uuid,
    email: &str,
    hash: &str,
    memberships: &[MembershipView],
) -> AppResult<()> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(email)
    .bind(hash)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AppError::Conflict(
            "a user with that email already exists".into(),
        ));
    }
    for m in memberships {
        let inserted = sqlx::query(
            "INSERT INTO memberships (user_id, tenant_id, role)
             SELECT $1, id, $3 FROM tenants WHERE id = $2
             ON CONFLICT (user_id, tenant_id) DO UPDATE SET role = EXCLUDED.role",
        )
        .bind(user_id)
        .bind(m.tenant_id)
        .bind(m.role)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(AppError::NotFound("tenant"));
        }
        audit::record(
            &mut tx,
            AuditEntry {
                actor: "auth_bootstrap_key",
                tenant_id: Some(m.tenant_id),
                action: "auth.bootstrap_user",
                target_type: "user",
                target_id: Some(user_id.to_string()),
                details: json!({"email": email, "role": m.role}),
            },
        )
        .await?;
    }
    if memberships.is_empty() {
        audit::record(
            &mut tx,
            AuditEntry {
                actor: "auth_bootstrap_key",
                tenant_id: None,
                action: "auth.bootstrap_user",
                target_type: "user",
                target_id: Some(user_id.to_string()),
                details: json!({"email": email}),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub sub: String,
    pub tenant_id: Uuid,
    pub role: Role,
    pub is_internal: bool,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

/// The caller's verified claims: a quick way to check a token.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, body = WhoAmI),
        (status = 401, body = shared::error::ErrorBody),
    ))]
async fn me(Principal(claims): Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        sub: claims.sub,
        tenant_id: claims.tenant_id,
        role: claims.role,
        is_internal: claims.is_internal,
        exp: claims.exp,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    /// Becomes `sub`.
    pub user_id: String,
    pub tenant_id: Uuid,
    pub role: Role,
    pub is_internal: bool,
    /// A duration such as `15m` or `1h` (at most 24h); default 1h.
    pub expires_in: Option<String>,
}

// No Debug: it holds a secret that must never reach a log line.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
}

const MAX_DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Mints a token for local development; absent in production.
#[utoipa::path(post, path = "/internal/dev/token", tag = "auth",
    request_body = DevTokenRequest,
    params(("x-dev-bootstrap-key" = String, Header, description = "DEV_BOOTSTRAP_KEY")),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
    ))]
async fn dev_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<DevTokenRequest>,
) -> AppResult<Json<TokenResponse>> {
    require_key(
        &headers,
        "x-dev-bootstrap-key",
        state.settings.dev_bootstrap_key.as_deref(),
    )?;
    let sub = body.user_id.trim();
    if sub.is_empty() || sub.len() > 200 {
        return Err(AppError::bad_request("user_id must be 1 to 200 characters"));
    }
    let ttl = match body.expires_in.as_deref() {
        None => Duration::from_secs(3600),
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| AppError::bad_request(format!("expires_in: {e}")))?,
    };
    if ttl.is_zero() || ttl > MAX_DEV_TOKEN_TTL {
        return Err(AppError::bad_request(
            "expires_in must be between 1s and 24h",
        ));
    }
    let token = state
        .jwt
        .issue(sub, body.tenant_id, body.role, body.is_internal, ttl)
        .map_err(anyhow::Error::from)?;
    let mut conn = state.pool.acquire().await?;
    audit::record(
        &mut conn,
        AuditEntry {
            actor: "dev_bootstrap_key",
            tenant_id: None,
            action: "auth.dev_token",
            target_type: "token",
            target_id: Some(sub.to_owned()),
            details: json!({"tenant_id": body.tenant_id, "role": body.role, "is_internal": body.is_internal, "ttl_seconds": ttl.as_secs()}),
        },
    )
    .await?;
    Ok(Json(TokenResponse { token }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validation() {
        assert!(validate_email("ops@example.com").is_ok());
        assert!(validate_email(" ops@example.com ").is_ok());
        for bad in [
            "",
            "no-at",
            "@example.com",
            "a@b",
            "a@.com",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn password_rules() {
        assert!(validate_password("short").is_err());
        assert!(validate_password("exactly12chr").is_ok());
        assert!(validate_password(&"x".repeat(2000)).is_err());
    }
}
