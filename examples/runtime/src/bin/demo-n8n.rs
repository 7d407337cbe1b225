//! A stand-in for a tenant's n8n in the local stack: answers n8n's health
//! check and every webhook with a booking, so the demo call's tool call has
//! somewhere to go. Tests use their own fake n8n (`api::testing::n8n`).

use std::net::SocketAddr;

use axum::Json;
use axum::routing::{get, post};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, env = "DEMO_N8N_LISTEN", default_value = "127.0.0.1:4005")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    shared::telemetry::init_logging(shared::config::LogFormat::Pretty);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/webhook/{*name}", post(booking));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "demo n8n answering /webhook/*");
    axum::serve(listener, app)
        .with_graceful_shutdown(shared::shutdown::signal())
        .await?;
    Ok(())
}

/// n8n's "Respond to Webhook" node, as a tenant's booking workflow would
/// answer: the booking found for the caller.
async fn booking(Json(request): Json<Value>) -> Json<Value> {
    tracing::info!(%request, "webhook called");
    Json(json!({
        "message": "Booking BK-1042 for 2 people, Friday at 8 pm, is confirmed.",
        "booking": {"reference": "BK-1042", "party_size": 2, "time": "Friday 20:00"},
    }))
}
