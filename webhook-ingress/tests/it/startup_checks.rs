//! The webhook-ingress binary itself: with `APP_ENV` unset it runs as
//! production and refuses unsigned webhooks before it touches anything;
//! and the kind of pool it connects with.

/// The ingress binary with a key of its own, run until it exits (see
/// `shared::testing::run_until_exit`).
fn run_ingress(env: &[(&str, &str)]) -> (bool, String) {
    let mut env = env.to_vec();
    env.insert(0, ("ENCRYPTION_KEY", shared::testing::ENCRYPTION_KEY));
    shared::testing::run_until_exit(env!("CARGO_BIN_EXE_webhook-ingress"), &env)
}

#[test]
fn ingress_without_app_env_refuses_unvalidated_signatures() {
    let (ok, stderr) = run_ingress(&[("TWILIO_VALIDATE_SIGNATURE", "false")]);
    assert!(!ok, "started: {stderr}");
    assert!(
        stderr.contains("refusing to start with APP_ENV=production")
            && stderr.contains("TWILIO_VALIDATE_SIGNATURE=false is refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn ingress_started_while_nats_is_down_is_alive_and_ready() {
    // Ready with Postgres alone: webhooks are committed without NATS and
    // the outbox publishes them later. NATS shows as failing.
    shared::testing::process::assert_readiness_while_nats_is_down(
        env!("CARGO_BIN_EXE_webhook-ingress"),
        "OPS_LISTEN_ADDR",
        &[
            ("TWILIO_AUTH_TOKEN", "test-twilio-auth-token"),
            ("TWILIO_WEBHOOK_BASE_URL", "http://127.0.0.1:4001"),
        ],
        200,
    )
    .await;
}

/// The pool kinds of `shared::db::connect_lazy`: the ingress's
/// (`Plans::Generic`) keeps generic plans, the others leave the choice to
/// Postgres.
#[sqlx::test(migrations = false)]
async fn a_generic_pool_keeps_generic_plans_and_a_default_one_leaves_postgres_to_choose(
    pool: sqlx::PgPool,
) {
    use shared::db::Plans;
    let args = shared::config::DbArgs {
        database_url: shared::testing::database_url(&pool),
        database_max_connections: 1,
    };
    for (plans, expected) in [
        (Plans::Generic, "force_generic_plan"),
        (Plans::Default, "auto"),
    ] {
        let pool = shared::db::connect_lazy(&args, plans).expect("a URL");
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(&pool)
            .await
            .expect("a connection");
        assert_eq!(mode, expected, "{plans:?}");
    }
}
