//! The HTTP scaffolding every binary serves: `/health`, `/health/ready`,
//! `/metrics`, request ids, request metrics by route, sensitive-header
//! redaction, body limits, timeouts, panics turned into 500s, and graceful
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::error_response;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What `/health/ready` checks.
#[derive(Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub metrics: PrometheusHandle,
    /// Whether NATS being unreachable makes the service unready. The
    /// ingress does its work without NATS (the outbox publishes later), so
    /// for it NATS is reported but does not take it out of rotation.
    pub nats_required: bool,
}

/// `/health`, `/health/ready` and `/metrics`.
pub fn ops_router(readiness: Readiness) -> Router {
    liveness_router()
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(readiness))
}

/// `/health` alone: for a public port, where readiness details and metrics
/// do not belong.
pub fn liveness_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/health", get(liveness))
}

async fn liveness() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Checks Postgres with `SELECT 1` (bounded in time). The answer names what
/// failed in fixed words; the driver's error (host names, user names, server
/// messages) goes to the log, never to whoever asked.
pub async fn check_postgres(pool: &PgPool) -> Result<(), &'static str> {
    match tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => {
            tracing::warn!(%err, "readiness: Postgres check failed");
            Err("query failed")
        }
        Err(_) => Err("timed out after 2s"),
    }
}

async fn check_nats(nats: &async_nats::Client) -> Result<(), &'static str> {
    match nats.connection_state() {
        async_nats::connection::State::Connected => {
            match tokio::time::timeout(Duration::from_secs(2), nats.flush()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => {
                    tracing::warn!(%err, "readiness: NATS flush failed");
                    Err("flush failed")
                }
                Err(_) => Err("flush timed out after 2s"),
            }
        }
        async_nats::connection::State::Pending => Err("not connected yet"),
        async_nats::connection::State::Disconnected => Err("disconnected"),
    }
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> Response {
    let (pg, nats) = tokio::join!(check_postgres(&readiness.pool), check_nats(&readiness.nats));
    let status = if pg.is_ok() && (nats.is_ok() || !readiness.nats_required) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let describe = |r: &Result<(), &str>| match r {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "error", "message": e}),
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "checks": { "postgres": describe(&pg), "nats": describe(&nats) },
    });
    (status, Json(body)).into_response()
}

async fn render_metrics(State(readiness): State<Arc<Readiness>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        readiness.metrics.render(),
    )
        .into_response()
}

/// Records `http_requests_total` and `http_request_duration_seconds` labelled
/// by matched route (never the raw path, which would explode cardinality),
/// method and status.
async fn track_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let mut response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    response
        .extensions_mut()
        .insert(MatchedRoute(route.clone()));
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// What every surface sets explicitly.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    pub body_bytes: usize,
    pub timeout: Duration,
    /// One info line per request ([`access_log`]); off where the request rate
    /// would make the log the cost (the ingress's webhooks).
    pub access_log: bool,
}

impl HttpOptions {
    /// An ops listener: probes and scrapes only.
    pub const OPS: Self = Self {
        body_bytes: 64 * 1024,
        timeout: Duration::from_secs(10),
        access_log: false,
    };
}

/// The route a request matched, handed from [`track_metrics`] (inside the
/// router, where it is known) to [`access_log`] (outside, where the final
/// status is).
#[derive(Clone)]
struct MatchedRoute(String);

/// One info line per request, target `access`: method, route, status,
/// latency and request id. Health probes and metrics scrapes are left out:
/// they would drown the rest. Sits outside the timeout and panic layers, so
/// their 503s and 500s are logged too (with route `-`; unknown routes are
/// `unmatched`).
async fn access_log(State(enabled): State<bool>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !enabled || path.starts_with("/health") || path == "/metrics" {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<MatchedRoute>()
        .map_or("-", |r| r.0.as_str());
    tracing::info!(
        target: "access",
        %method,
        route,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id,
        "request"
    );
    response
}

/// Wraps a binary's router with the layers every surface shares.
pub fn with_common_layers(router: Router, service: &'static str, options: HttpOptions) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(move |request: &Request| {
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!(
            "http",
            service,
            request_id,
            method = %request.method(),
            path = %request.uri().path(),
        )
    });
    router
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn(track_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([
                    header::AUTHORIZATION,
                    header::COOKIE,
                    HeaderName::from_static("x-twilio-signature"),
                    HeaderName::from_static("x-dev-bootstrap-key"),
                    HeaderName::from_static("x-auth-bootstrap-key"),
                ]))
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(trace)
                .layer(middleware::from_fn_with_state(
                    options.access_log,
                    access_log,
                ))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(|_| {
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error",
                    )
                }))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    options.timeout,
                ))
                .layer(RequestBodyLimitLayer::new(options.body_bytes)),
        )
}

/// Serves a binary's ops listener (`/health`, `/health/ready`, `/metrics`)
/// until `shutdown` resolves.
pub async fn serve_ops(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    service: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = with_common_layers(ops_router(readiness), service, HttpOptions::OPS);
    serve(listener, app, shutdown).await
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Answers are small and latency-bound: no Nagle delay on them.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
