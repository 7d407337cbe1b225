//! Graceful shutdown: one future that resolves on SIGTERM or Ctrl-C, a
//! cancellation token that workers watch to stop fetching new work, and the
//! start-up retry that gives up only when the process is asked to stop.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Resolves when the process receives SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

/// A token cancelled when the process is asked to stop.
pub fn token_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        child.cancel();
    });
    token
}

/// Runs `attempt` until it succeeds (`Some`) or `stop` is cancelled
/// (`None`), `every` apart, logging each failure as "cannot `what` yet": for
/// set-up that must wait for a dependency (JetStream streams, consumers)
/// while the binary already serves its health endpoints.
pub async fn retry_until_cancelled<T, E, F, Fut>(
    what: &str,
    every: Duration,
    stop: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => tracing::warn!(%err, "cannot {what} yet; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn retries_until_success_or_cancellation() {
        let stop = CancellationToken::new();
        let tries = AtomicU32::new(0);
        let got = retry_until_cancelled("count", Duration::from_millis(1), &stop, || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("not yet"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got, Some(2));
        stop.cancel();
        let never: Option<()> =
            retry_until_cancelled("fail", Duration::from_secs(3600), &stop, || async {
                Err("down")
            })
            .await;
        assert_eq!(never, None);
    }
}
