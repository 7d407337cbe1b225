//! Fixtures the binaries' integration tests share (feature `test-support`,
//! enabled only in their dev-dependencies).

use sqlx::PgPool;
use uuid::Uuid;

/// What [`seed_routed_number`] created.
#[derive(Debug, Clone)]
pub struct RoutedNumber {
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub version_id: Uuid,
    pub phone_number_id: Uuid,
    pub e164: String,
}

/// A tenant, an agent whose active version is the published `version`, and
/// an active phone number `e164` routed to it, in one transaction.
pub async fn seed_routed_number(
    pool: &PgPool,
    e164: &str,
    version: i32,
) -> Result<RoutedNumber, sqlx::Error> {
    let seeded = RoutedNumber {
        tenant_id: Uuid::now_v7(),
        agent_id: Uuid::now_v7(),
        version_id: Uuid::now_v7(),
        phone_number_id: Uuid::now_v7(),
        e164: e164.to_owned(),
    };
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'acme')")
        .bind(seeded.tenant_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO agents (id, tenant_id, name, active_version_id) VALUES ($1, $2, 'a', $3)",
    )
    .bind(seeded.agent_id)
    .bind(seeded.tenant_id)
    .bind(seeded.version_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO agent_versions (id, tenant_id, agent_id, version, config, status, published_at)
         VALUES ($1, $2, $3, $4, '{}', 'published', now())",
    )
    .bind(seeded.version_id)
    .bind(seeded.tenant_id)
    .bind(seeded.agent_id)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO phone_numbers (id, tenant_id, e164, twilio_sid, agent_id)
         VALUES ($1, $2, $3, 'PN1', $4)",
    )
    .bind(seeded.phone_number_id)
    .bind(seeded.tenant_id)
    .bind(e164)
    .bind(seeded.agent_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(seeded)
}
