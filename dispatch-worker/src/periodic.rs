//! The loop of the worker's periodic jobs (the KPI rollups, the retention
//! purge): run now and then every `interval`, a late tick delayed rather
//! than bunched, and stop with the worker, in the middle of a run too (a
//! run's open transaction is rolled back; the next start goes on from its
//! last commit).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub async fn every<F, Fut>(interval: Duration, shutdown: CancellationToken, mut run: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = run() => {}
        }
    }
}
