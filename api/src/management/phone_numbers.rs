//! `/internal/phone-numbers`: the tenant's Twilio numbers and the agent each
//! one routes inbound calls to. A number (E.164) is routed at most once in
//! the whole platform.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::InternalPrincipal;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page};
use crate::management::announce_routes_changed;
use crate::management::{TenantListQuery, audit, is_unique_violation, nullable, text_field};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_phone_number, list_phone_numbers))
        .routes(routes!(set_phone_number_agent))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum PhoneNumberStatus {
    Active,
    Inactive,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct PhoneNumber {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `+` and 8 to 15 digits.
    pub e164: String,
    pub twilio_sid: String,
    /// The agent inbound calls go to; `null` routes nowhere.
    pub agent_id: Option<Uuid>,
    pub status: PhoneNumberStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePhoneNumber {
    pub tenant_id: Uuid,
    /// E.164: `+` then 8 to 15 digits, the first not 0 (e.g. `+14155550100`).
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$", example = "+14155550100")]
    pub e164: String,
    /// Twilio's IncomingPhoneNumber sid (1 to 64 characters).
    #[schema(min_length = 1, max_length = 64)]
    pub twilio_sid: String,
    pub agent_id: Option<Uuid>,
    /// Default `active`.
    pub status: Option<PhoneNumberStatus>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPhoneNumberAgent {
    /// An agent of the tenant, or `null` to stop routing. Required.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Uuid>, nullable, required = true)]
    pub agent_id: Option<Option<Uuid>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PhoneNumberPath {
    pub phone_number_id: Uuid,
}

/// `+` and 8 to 15 digits, the first not 0 (country codes never start with 0).
pub fn validate_e164(value: &str) -> AppResult<()> {
    let digits = value.strip_prefix('+').unwrap_or("");
    let valid = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(())
    } else {
        Err(AppError::bad_request(
            "e164 must be an E.164 number: + then 8 to 15 digits, no spaces (e.g. +14155550100)",
        ))
    }
}

/// 404 unless `agent_id` is an agent of the tenant.
async fn require_agent(conn: &mut PgConnection, tenant_id: Uuid, agent_id: Uuid) -> AppResult<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1 AND tenant_id = $2)")
            .bind(agent_id)
            .bind(tenant_id)
            .fetch_one(conn)
            .await?;
    if exists {
        Ok(())
    } else {
        Err(AppError::NotFound("agent"))
    }
}

/// Adds a number to the tenant, optionally routed to one of its agents.
#[utoipa::path(post, path = "/internal/phone-numbers", tag = "phone-numbers",
    security(("bearer" = [])),
    request_body = CreatePhoneNumber,
    responses(
        (status = 201, body = PhoneNumber),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "agent_id is not an agent of the tenant", body = shared::error::ErrorBody),
        (status = 409, description = "the number is already routed", body = shared::error::ErrorBody),
    ))]
async fn create_phone_number(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Json(body): Json<CreatePhoneNumber>,
) -> AppResult<(StatusCode, Json<PhoneNumber>)> {
    claims.require_tenant(body.tenant_id)?;
    validate_e164(&body.e164)?;
    let twilio_sid = text_field("twilio_sid", &body.twilio_sid, 1, 64)?;
    let status = body.status.unwrap_or(PhoneNumberStatus::Active);
    let mut tx = state.pool.begin().await?;
    if let Some(agent_id) = body.agent_id {
        require_agent(&mut tx, body.tenant_id, agent_id).await?;
    }
    let inserted = sqlx::query_as::<_, PhoneNumber>(
        "INSERT INTO phone_numbers (id, tenant_id, e164, twilio_sid, agent_id, status)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, tenant_id, e164, twilio_sid, agent_id, status, created_at, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(body.tenant_id)
    .bind(&body.e164)
    .bind(&twilio_sid)
    .bind(body.agent_id)
    .bind(status)
    .fetch_one(&mut *tx)
    .await;
    let number = match inserted {
        Ok(number) => number,
        Err(err) if is_unique_violation(&err, "phone_numbers_e164_key") => {
            return Err(AppError::Conflict(format!(
                "{} is already routed; a number can be routed only once",
                body.e164
            )));
        }
        Err(err) => return Err(err.into()),
    };
    audit(
        &mut tx,
        &claims,
        number.tenant_id,
        "phone_number.create",
        "phone_number",
        number.id,
        json!({"e164": number.e164, "twilio_sid": number.twilio_sid,
               "agent_id": number.agent_id, "status": number.status}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(number)))
}

const PHONE_NUMBER_SELECT: &str =
    "SELECT id, tenant_id, e164, twilio_sid, agent_id, status, created_at, updated_at
     FROM phone_numbers";

/// The tenant's numbers, newest first.
#[utoipa::path(get, path = "/internal/phone-numbers", tag = "phone-numbers",
    security(("bearer" = [])),
    params(TenantListQuery),
    responses(
        (status = 200, body = Page<PhoneNumber>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn list_phone_numbers(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Query(query): Query<TenantListQuery>,
) -> AppResult<Json<Page<PhoneNumber>>> {
    let page = query
        .fetch_page(
            &claims,
            &state.pool,
            PHONE_NUMBER_SELECT,
            |n: &PhoneNumber| Cursor {
                at: n.created_at,
                id: n.id,
            },
        )
        .await?;
    Ok(Json(page))
}

/// Routes the number to another agent of the tenant, or nowhere (`null`).
#[utoipa::path(patch, path = "/internal/phone-numbers/{phone_number_id}/agent", tag = "phone-numbers",
    security(("bearer" = [])),
    params(PhoneNumberPath),
    request_body = SetPhoneNumberAgent,
    responses(
        (status = 200, body = PhoneNumber),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "the number or the agent", body = shared::error::ErrorBody),
    ))]
async fn set_phone_number_agent(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<PhoneNumberPath>,
    Json(body): Json<SetPhoneNumberAgent>,
) -> AppResult<Json<PhoneNumber>> {
    let Some(agent_id) = body.agent_id else {
        return Err(AppError::bad_request(
            "agent_id is required: an agent id, or null to stop routing",
        ));
    };
    let mut tx = state.pool.begin().await?;
    let previous: Option<Option<Uuid>> = sqlx::query_scalar(
        "SELECT agent_id FROM phone_numbers WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
    )
    .bind(path.phone_number_id)
    .bind(claims.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(previous) = previous else {
        return Err(AppError::NotFound("phone number"));
    };
    if let Some(agent_id) = agent_id {
        require_agent(&mut tx, claims.tenant_id, agent_id).await?;
    }
    let number: PhoneNumber = sqlx::query_as(
        "UPDATE phone_numbers SET agent_id = $2, updated_at = now() WHERE id = $1 AND tenant_id = $3
         RETURNING id, tenant_id, e164, twilio_sid, agent_id, status, created_at, updated_at",
    )
    .bind(path.phone_number_id)
    .bind(agent_id)
    .bind(claims.tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &claims,
        number.tenant_id,
        "phone_number.set_agent",
        "phone_number",
        number.id,
        json!({"e164": number.e164, "agent_id": agent_id, "previous_agent_id": previous}),
    )
    .await?;
    tx.commit().await?;
    announce_routes_changed(&state).await;
    Ok(Json(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_rules() {
        for ok in ["+14155550100", "+12345678", "+123456789012345"] {
            assert!(validate_e164(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "+",
            "14155550100",
            "+1234567",
            "+1234567890123456",
            "+04155550100",
            "+1 415 555 0100",
            "+1415555010a",
            "++14155550100",
        ] {
            assert!(validate_e164(bad).is_err(), "{bad}");
        }
    }
}
