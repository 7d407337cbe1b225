//! Reseals secrets stored under an older form, run by the api at start-up
//! right after the migrations (and by `api migrate`): an integration secret
//! sealed with the associated data `integrations:<id>` is opened with it and
//! sealed again bound to its tenant, and an endpoint's header values still
//! in clear in `headers_template` are sealed and the template emptied. The
//! automation-worker opens only the current form, so nothing legacy is ever
//! accepted on the execution path
//! (docs/decisions/0040-secrets-bound-to-tenant-and-resealed.md).
//!
//! Rows are taken in id order, a batch per transaction, locked `FOR UPDATE`:
//! api instances starting together reseal each row once (a row another
//! instance resealed meanwhile no longer matches when its lock is granted).

use shared::automation::{
    INTEGRATION_SECRET_AAD_VERSION, integration_secret_aad, legacy_integration_secret_aad,
};
use shared::crypto::{Sealed, SecretBox};
use sqlx::PgPool;
use uuid::Uuid;

/// Rows per transaction.
const BATCH: i64 = 200;

/// What one reseal did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Integration secrets now bound to their tenant.
    pub integrations: u64,
    /// Endpoints whose clear header values are now sealed.
    pub endpoints: u64,
    /// Rows left as they were because they do not open (another key,
    /// tampered data); their executions fail with `secret` as before.
    pub skipped: u64,
}

/// Reseals every legacy row; idempotent.
pub async fn reseal_legacy(pool: &PgPool, secrets: &SecretBox) -> Result<Resealed, sqlx::Error> {
    let mut done = Resealed::default();
    reseal_integrations(pool, secrets, &mut done).await?;
    seal_clear_headers(pool, secrets, &mut done).await?;
    if done != Resealed::default() {
        tracing::info!(
            integrations = done.integrations,
            endpoints = done.endpoints,
            skipped = done.skipped,
            "resealed legacy secrets"
        );
    }
    Ok(done)
}

#[derive(sqlx::FromRow)]
struct LegacyIntegration {
    id: Uuid,
    tenant_id: Uuid,
    secret_ciphertext: Option<Vec<u8>>,
    secret_nonce: Option<Vec<u8>>,
    secret_key_id: Option<String>,
}

async fn reseal_integrations(
    pool: &PgPool,
    secrets: &SecretBox,
    done: &mut Resealed,
) -> Result<(), sqlx::Error> {
    let mut after = Uuid::nil();
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<LegacyIntegration> = sqlx::query_as(
            "SELECT id, tenant_id, secret_ciphertext, secret_nonce, secret_key_id
             FROM integrations WHERE secret_aad_version = 1 AND id > $1
             ORDER BY id LIMIT $2 FOR UPDATE",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.id;
        for row in rows {
            let resealed = match (row.secret_ciphertext, row.secret_nonce, row.secret_key_id) {
                (Some(ciphertext), Some(nonce), Some(key_id)) => {
                    let sealed = Sealed {
                        ciphertext,
                        nonce,
                        key_id,
                    };
                    match rebind(secrets, &sealed, row.tenant_id, row.id) {
                        Ok(resealed) => Some(resealed),
                        Err(err) => {
                            tracing::warn!(integration_id = %row.id, %err, "integration secret not resealed: it does not open");
                            done.skipped += 1;
                            continue;
                        }
                    }
                }
                // No secret: only the version is brought up to date.
                _ => None,
            };
            sqlx::query(
                "UPDATE integrations
                 SET secret_ciphertext = COALESCE($2, secret_ciphertext),
                     secret_nonce = COALESCE($3, secret_nonce),
                     secret_key_id = COALESCE($4, secret_key_id),
                     secret_aad_version = $5
                 WHERE id = $1",
            )
            .bind(row.id)
            .bind(resealed.as_ref().map(|s| &s.ciphertext))
            .bind(resealed.as_ref().map(|s| &s.nonce))
            .bind(resealed.as_ref().map(|s| &s.key_id))
            .bind(INTEGRATION_SECRET_AAD_VERSION)
            .execute(&mut *tx)
            .await?;
            done.integrations += u64::from(resealed.is_some());
        }
        tx.commit().await?;
    }
}

/// The legacy secret opened and sealed under the current binding.
fn rebind(
    secrets: &SecretBox,
    sealed: &Sealed,
    tenant_id: Uuid,
    integration_id: Uuid,
) -> Result<Sealed, shared::crypto::CryptoError> {
    let plain = secrets.open(sealed, &legacy_integration_secret_aad(integration_id))?;
    secrets.seal(&plain, &integration_secret_aad(tenant_id, integration_id))
}

#[derive(sqlx::FromRow)]
struct ClearHeaders {
    id: Uuid,
    tenant_id: Uuid,
    tool_id: Uuid,
    integration_id: Uuid,
    headers_template: serde_json::Value,
}

async fn seal_clear_headers(
    pool: &PgPool,
    secrets: &SecretBox,
    done: &mut Resealed,
) -> Result<(), sqlx::Error> {
    let mut after = Uuid::nil();
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<ClearHeaders> = sqlx::query_as(
            "SELECT id, tenant_id, tool_id, integration_id, headers_template
             FROM tool_endpoints WHERE headers_template <> '{}'::jsonb AND id > $1
             ORDER BY id LIMIT $2 FOR UPDATE",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.id;
        for row in rows {
            let sealed = match crate::management::tools::seal_headers(
                secrets,
                row.tenant_id,
                row.tool_id,
                row.integration_id,
                &row.headers_template,
            ) {
                Ok(sealed) => sealed,
                Err(err) => {
                    tracing::warn!(endpoint_id = %row.id, %err, "endpoint headers not sealed");
                    done.skipped += 1;
                    continue;
                }
            };
            // Clear values written after sealed ones (an older api replacing
            // the endpoint) are the newer: they replace the sealed ones.
            sqlx::query(
                "UPDATE tool_endpoints
                 SET headers_template = '{}'::jsonb, header_names = $2,
                     headers_ciphertext = $3, headers_nonce = $4, headers_key_id = $5
                 WHERE id = $1",
            )
            .bind(row.id)
            .bind(crate::management::tools::header_names(
                &row.headers_template,
            ))
            .bind(sealed.as_ref().map(|s| &s.ciphertext))
            .bind(sealed.as_ref().map(|s| &s.nonce))
            .bind(sealed.as_ref().map(|s| &s.key_id))
            .execute(&mut *tx)
            .await?;
            done.endpoints += 1;
        }
        tx.commit().await?;
    }
}
