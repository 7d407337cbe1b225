//! Graceful shutdown: one future that resolves on SIGTERM or Ctrl-C, a
//! cancellation token that workers watch to stop fetching new work, the
//! order in which a worker's tasks stop (`WorkerTasks`), and the start-up
//! retry that gives up only when the process is asked to stop.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::Readiness;

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

/// Tasks that stop together: each watches the stage's token, and the
/// stage has stopped once every task on its tracker has returned.
#[derive(Clone, Default)]
pub struct Stage {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Stage {
    /// Spawns `task`, handing it the token that tells it to stop.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task(self.stop.clone()));
    }

    /// The tracker, for work a task of this stage hands off (a request it
    /// took): the stage waits for that work too.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A worker's tasks in three stages, stopped in this order: `intake`
/// (consumers stop taking work and finish what they took), then
/// `background` (the loops that act on what intake wrote: the outbox relay,
/// the reaper, the expiry job), then the ops server, so that probes and
/// metrics answer until the worker exits.
#[derive(Default)]
pub struct WorkerTasks {
    pub intake: Stage,
    pub background: Stage,
    ops: Stage,
}

impl WorkerTasks {
    /// Serves health, readiness and metrics on `listener` until the last
    /// stage stops.
    pub fn serve_ops(
        &self,
        listener: tokio::net::TcpListener,
        readiness: Readiness,
        service: &'static str,
    ) {
        self.ops.spawn(|stop| async move {
            let stopped = async move { stop.cancelled().await };
            if let Err(err) = crate::http::serve_ops(listener, readiness, service, stopped).await {
                tracing::error!(%err, "ops server failed");
            }
        });
    }

    /// Stops intake and waits for the work it took; `stop` does the rest.
    pub async fn stop_intake(&self) {
        self.intake.stop().await;
    }

    /// Stops every stage, in order.
    pub async fn stop(self) {
        self.intake.stop().await;
        self.background.stop().await;
        self.ops.stop().await;
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

    #[tokio::test]
    async fn stages_stop_in_order_and_wait_for_handed_off_work() {
        use std::sync::{Arc, Mutex};
        let tasks = WorkerTasks::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let record = |stage: &'static str| {
            let order = order.clone();
            move |stop: CancellationToken| async move {
                stop.cancelled().await;
                // Later stages must not be stopped while this one drains.
                tokio::time::sleep(Duration::from_millis(20)).await;
                order.lock().expect("lock").push(stage);
            }
        };
        tasks.background.spawn(record("background"));
        tasks.intake.spawn(record("intake"));
        let handed_off = order.clone();
        tasks.intake.tracker().spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            handed_off.lock().expect("lock").push("in flight");
        });
        tasks.ops.spawn(record("ops"));
        tasks.stop().await;
        assert_eq!(
            *order.lock().expect("lock"),
            ["intake", "in flight", "background", "ops"]
        );
    }
}
