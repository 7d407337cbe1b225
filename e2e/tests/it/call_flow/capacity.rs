//! Concurrent-call limits at ring time: admission is exact under a burst on
//! one ingress or several, a call stops counting when it ends, when its
//! dispatch expires unclaimed, or after `MAX_CALL_DURATION`; agent limits
//! apply within the tenant's; a lowered limit cuts no call; tenants do not
//! share capacity.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use sqlx::PgPool;
use uuid::Uuid;

use super::world::*;

const INBOUND: &str = "/twilio/webhook/inbound";
const STATUS: &str = "/twilio/webhook/status";
const BUSY: &str = r#"<Reject reason="busy"/>"#;
const CONNECT: &str = "<Connect><Stream";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Answer {
    Admitted,
    Refused,
}

async fn set_tenant_limit(pool: &PgPool, tenant_id: Uuid, limit: Option<i32>) {
    sqlx::query("UPDATE tenants SET max_concurrent_calls = $2 WHERE id = $1")
        .bind(tenant_id)
        .bind(limit)
        .execute(pool)
        .await
        .expect("set the tenant's limit");
}

fn sid(tag: u32, n: u32) -> String {
    format!("CA{tag:08}{n:024}")
}

/// Rings `sid` at `to` through the ingress at `base`.
async fn ring(w: &World, base: &str, sid: &str, to: &str) -> Answer {
    let (status, body) = w
        .post_signed_to(base, INBOUND, &inbound_params(sid, to))
        .await;
    assert_eq!(status, 200, "{body}");
    if body.contains(CONNECT) {
        Answer::Admitted
    } else {
        assert!(body.contains(BUSY), "neither admitted nor busy: {body}");
        Answer::Refused
    }
}

/// Twilio's status callback for `sid`.
async fn end(w: &World, sid: &str, to: &str, status: &str) {
    let params = params(&[("CallSid", sid), ("CallStatus", status), ("To", to)]);
    assert_eq!(w.post_signed(STATUS, &params).await.0, 200);
}

async fn live_calls(w: &World, tenant_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_sessions WHERE tenant_id = $1 AND live")
        .bind(tenant_id)
        .fetch_one(&w.pool)
        .await
        .expect("count live calls")
}

/// The live-call counters admission reads: the tenant's and its agent's.
async fn counters(w: &World, seeded: &Seeded) -> (i32, i32) {
    sqlx::query_as(
        "SELECT t.live_calls, a.live_calls FROM tenants t, agents a
         WHERE t.id = $1 AND a.id = $2",
    )
    .bind(seeded.tenant_id)
    .bind(seeded.agent_id)
    .fetch_one(&w.pool)
    .await
    .expect("the counters")
}

async fn release_reason(w: &World, sid: &str) -> Option<String> {
    sqlx::query_scalar("SELECT release_reason FROM call_sessions WHERE call_sid = $1")
        .bind(sid)
        .fetch_one(&w.pool)
        .await
        .expect("the session")
}

/// Two tenants' bursts at once, spread over `bases`: 200 first webhooks for
/// a tenant with limit 10 and 40 for one with limit 5. Each admits exactly
/// its limit; every refused call is recorded `rejected` for capacity and
/// gets no dispatch; Twilio's retries get the same answer as the first try.
async fn burst(w: &World, bases: &[String]) {
    let big = seed_number(&w.pool, "+14155550700").await;
    let small = seed_number(&w.pool, "+14155550701").await;
    set_tenant_limit(&w.pool, big.tenant_id, Some(10)).await;
    set_tenant_limit(&w.pool, small.tenant_id, Some(5)).await;
    let calls: Vec<(String, &Seeded)> = (0..200)
        .map(|n| (sid(1, n), &big))
        .chain((0..40).map(|n| (sid(2, n), &small)))
        .collect();
    let first = join_all(
        calls
            .iter()
            .enumerate()
            .map(|(i, (sid, seeded))| ring(w, &bases[i % bases.len()], sid, &seeded.e164)),
    )
    .await;
    let admitted = |tenant: Uuid| {
        calls
            .iter()
            .zip(&first)
            .filter(|((_, s), a)| s.tenant_id == tenant && **a == Answer::Admitted)
            .count()
    };
    assert_eq!(admitted(big.tenant_id), 10);
    assert_eq!(admitted(small.tenant_id), 5);
    assert_eq!(live_calls(w, big.tenant_id).await, 10);
    assert_eq!(live_calls(w, small.tenant_id).await, 5);
    // What admission reads kept up: no worker runs yet to recount it.
    assert_eq!(counters(w, &big).await.0, 10);
    assert_eq!(counters(w, &small).await.0, 5);
    assert_eq!(
        w.scalar(
            "SELECT count(*) FROM call_sessions
             WHERE status = 'rejected' AND rejected_reason = 'capacity' AND NOT live"
        )
        .await,
        225
    );

    // Retries, through another instance than the first try where there is one.
    let retried = join_all(
        calls
            .iter()
            .enumerate()
            .map(|(i, (sid, seeded))| ring(w, &bases[(i + 1) % bases.len()], sid, &seeded.e164)),
    )
    .await;
    assert_eq!(retried, first, "a retry gets the answer of the first try");
    assert_eq!(live_calls(w, big.tenant_id).await, 10);
    assert_eq!(
        counters(w, &big).await.0,
        10,
        "a retry is not counted again"
    );

    // Refusals show by reason (the counter is the process's, shared by
    // every ingress of every test here).
    let refused = w
        .metric(
            &w.ingress_ops,
            r#"ingress_calls_rejected_total{reason="capacity"}"#,
        )
        .await
        .unwrap_or_default();
    assert!(refused >= 225.0, "{refused} refusals exported");

    // Only the admitted calls are dispatched, and the live calls show per
    // tenant.
    let worker_ops = w.spawn_worker(|_| {}).await;
    for (tenant, live) in [(big.tenant_id, 10.0), (small.tenant_id, 5.0)] {
        let series = format!(r#"calls_live{{tenant="{tenant}"}}"#);
        assert!(
            eventually(Duration::from_secs(10), || async {
                w.metric(&worker_ops, &series).await == Some(live)
            })
            .await,
            "{series} is {live}"
        );
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            w.scalar(
                "SELECT count(*) FROM call_events
                 WHERE type = 'call.inbound' AND processed_at IS NOT NULL",
            )
            .await
                == 240
        })
        .await,
        "every inbound event was processed"
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM runtime_dispatches").await,
        15
    );
    assert_eq!(
        w.scalar(
            "SELECT count(*) FROM runtime_dispatches d JOIN call_sessions s ON s.id = d.call_id
             WHERE NOT s.live"
        )
        .await,
        0
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_burst_on_one_ingress_admits_exactly_the_limit(pool: PgPool) {
    let w = world(pool).await;
    let bases = vec![w.ingress_base.clone()];
    burst(&w, &bases).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_burst_over_three_ingresses_admits_exactly_the_limit(pool: PgPool) {
    let w = world(pool).await;
    let bases = vec![
        w.ingress_base.clone(),
        w.spawn_ingress().await,
        w.spawn_ingress().await,
    ];
    burst(&w, &bases).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_end_status_releases_the_call(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|_| {}).await;
    let seeded = seed_number(&w.pool, "+14155550710").await;
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(1)).await;
    let base = w.ingress_base.clone();
    for (n, status) in ["completed", "busy", "failed", "no-answer", "canceled"]
        .into_iter()
        .enumerate()
    {
        let n = u32::try_from(n).expect("small");
        let call = sid(10, n);
        assert_eq!(ring(&w, &base, &call, &seeded.e164).await, Answer::Admitted);
        assert_eq!(
            ring(&w, &base, &sid(11, n), &seeded.e164).await,
            Answer::Refused,
            "at the limit while {call} is live"
        );
        // An update that is not an end keeps it counting.
        end(&w, &call, &seeded.e164, "in-progress").await;
        end(&w, &call, &seeded.e164, status).await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                live_calls(&w, seeded.tenant_id).await == 0
            })
            .await,
            "{status} released the call"
        );
        assert_eq!(release_reason(&w, &call).await.as_deref(), Some("ended"));
    }
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_unclaimed_dispatch_releases_its_call(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|c| {
        c.dispatch_ttl_seconds = 1;
        c.dispatch_expiry_interval = Duration::from_millis(200);
    })
    .await;
    let seeded = seed_number(&w.pool, "+14155550720").await;
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(1)).await;
    let base = w.ingress_base.clone();
    let call = sid(20, 0);
    assert_eq!(ring(&w, &base, &call, &seeded.e164).await, Answer::Admitted);
    assert!(
        eventually(Duration::from_secs(15), || async {
            release_reason(&w, &call).await.is_some()
        })
        .await,
        "the expiry released the call"
    );
    assert_eq!(
        release_reason(&w, &call).await.as_deref(),
        Some("dispatch_expired")
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM runtime_dispatches WHERE status = 'expired'")
            .await,
        1
    );
    assert_eq!(
        ring(&w, &base, &sid(20, 1), &seeded.e164).await,
        Answer::Admitted
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_call_without_an_end_is_released_after_the_longest_call(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|c| {
        c.max_call_duration = Duration::from_secs(2);
        c.dispatch_expiry_interval = Duration::from_millis(200);
    })
    .await;
    let seeded = seed_number(&w.pool, "+14155550730").await;
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(1)).await;
    let base = w.ingress_base.clone();
    let call = sid(30, 0);
    assert_eq!(ring(&w, &base, &call, &seeded.e164).await, Answer::Admitted);
    // Still within its two seconds: counted.
    assert_eq!(
        ring(&w, &base, &sid(30, 1), &seeded.e164).await,
        Answer::Refused
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            release_reason(&w, &call).await.is_some()
        })
        .await,
        "the safety net released the call"
    );
    assert_eq!(
        release_reason(&w, &call).await.as_deref(),
        Some("max_duration")
    );
    assert_eq!(
        ring(&w, &base, &sid(30, 2), &seeded.e164).await,
        Answer::Admitted
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_agent_limit_applies_within_the_tenant_limit(pool: PgPool) {
    let w = world(pool).await;
    let seeded = seed_number(&w.pool, "+14155550740").await;
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(3)).await;
    sqlx::query("UPDATE agents SET max_concurrent_calls = 1 WHERE id = $1")
        .bind(seeded.agent_id)
        .execute(&w.pool)
        .await
        .expect("agent limit");
    // A second agent of the tenant, without a limit of its own.
    let other_agent = Uuid::now_v7();
    let other_number = "+14155550741";
    sqlx::query(
        "INSERT INTO agents (id, tenant_id, name, active_version_id) VALUES ($1, $2, 'b', NULL)",
    )
    .bind(other_agent)
    .bind(seeded.tenant_id)
    .execute(&w.pool)
    .await
    .expect("second agent");
    sqlx::query(
        "INSERT INTO phone_numbers (id, tenant_id, e164, twilio_sid, agent_id)
         VALUES ($1, $2, $3, 'PN2', $4)",
    )
    .bind(Uuid::now_v7())
    .bind(seeded.tenant_id)
    .bind(other_number)
    .bind(other_agent)
    .execute(&w.pool)
    .await
    .expect("second number");

    let base = w.ingress_base.clone();
    let mut answers = HashMap::new();
    let first_number = seeded.e164.as_str();
    for (n, to) in [
        first_number,
        first_number,
        other_number,
        other_number,
        other_number,
    ]
    .into_iter()
    .enumerate()
    {
        let n = u32::try_from(n).expect("small");
        answers.insert(n, ring(&w, &base, &sid(40, n), to).await);
    }
    // The first agent's second call is over its own limit; the second
    // agent's third is over the tenant's.
    assert_eq!(answers[&0], Answer::Admitted);
    assert_eq!(answers[&1], Answer::Refused);
    assert_eq!(answers[&2], Answer::Admitted);
    assert_eq!(answers[&3], Answer::Admitted);
    assert_eq!(answers[&4], Answer::Refused);
    assert_eq!(live_calls(&w, seeded.tenant_id).await, 3);
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_lowered_limit_cuts_no_call_and_refuses_until_under_it(pool: PgPool) {
    let w = world(pool).await;
    w.spawn_worker(|_| {}).await;
    let seeded = seed_number(&w.pool, "+14155550750").await;
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(3)).await;
    let base = w.ingress_base.clone();
    let live: Vec<String> = (0..3).map(|n| sid(50, n)).collect();
    for call in &live {
        assert_eq!(ring(&w, &base, call, &seeded.e164).await, Answer::Admitted);
    }
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(1)).await;
    assert_eq!(live_calls(&w, seeded.tenant_id).await, 3, "no call is cut");

    let mut next = 10;
    for (ended, call) in live.iter().enumerate() {
        let still_live = 3 - i64::try_from(ended).expect("small");
        assert_eq!(
            ring(&w, &base, &sid(50, next), &seeded.e164).await,
            Answer::Refused,
            "{still_live} live against a limit of 1"
        );
        next += 1;
        end(&w, call, &seeded.e164, "completed").await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                live_calls(&w, seeded.tenant_id).await == still_live - 1
            })
            .await
        );
    }
    assert_eq!(
        ring(&w, &base, &sid(50, next), &seeded.e164).await,
        Answer::Admitted
    );
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_tenant_without_a_limit_admits_every_call(pool: PgPool) {
    let w = world(pool).await;
    let limited = seed_number(&w.pool, "+14155550760").await;
    let unlimited = seed_number(&w.pool, "+14155550761").await;
    set_tenant_limit(&w.pool, limited.tenant_id, Some(0)).await;
    let base = w.ingress_base.clone();
    let answers = join_all((0..30).map(|n| {
        let to = if n % 2 == 0 {
            &limited.e164
        } else {
            &unlimited.e164
        };
        let base = &base;
        let w = &w;
        async move { (n % 2, ring(w, base, &sid(60, n), to).await) }
    }))
    .await;
    for (odd, answer) in answers {
        let expected = if odd == 1 {
            Answer::Admitted
        } else {
            Answer::Refused
        };
        assert_eq!(answer, expected);
    }
    assert_eq!(live_calls(&w, unlimited.tenant_id).await, 15);
    assert_eq!(live_calls(&w, limited.tenant_id).await, 0);
    w.delete_streams().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_live_call_counters_follow_every_admission_and_release(pool: PgPool) {
    let w = world(pool).await;
    // The expiry loop's first round runs at once, then not within the test:
    // the counters are checked as the flow keeps them, not as a recount
    // mends them.
    w.spawn_worker(|c| c.dispatch_expiry_interval = Duration::from_secs(3600))
        .await;
    let seeded = seed_number(&w.pool, "+14155550750").await;
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(100)).await;
    sqlx::query("UPDATE agents SET max_concurrent_calls = 100 WHERE id = $1")
        .bind(seeded.agent_id)
        .execute(&w.pool)
        .await
        .expect("agent limit");
    let base = w.ingress_base.clone();
    let calls: Vec<String> = (0..6).map(|n| sid(50, n)).collect();
    for call in &calls {
        assert_eq!(ring(&w, &base, call, &seeded.e164).await, Answer::Admitted);
    }
    assert_eq!(counters(&w, &seeded).await, (6, 6));
    // Retries count nothing again.
    for call in &calls[..2] {
        assert_eq!(ring(&w, &base, call, &seeded.e164).await, Answer::Admitted);
    }
    assert_eq!(counters(&w, &seeded).await, (6, 6));

    // Two end; a status that is not an end keeps its call counted.
    end(&w, &calls[0], &seeded.e164, "completed").await;
    end(&w, &calls[1], &seeded.e164, "canceled").await;
    end(&w, &calls[2], &seeded.e164, "in-progress").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            live_calls(&w, seeded.tenant_id).await == 4
        })
        .await,
        "the two ends were applied"
    );
    assert_eq!(counters(&w, &seeded).await, (4, 4));
    // A live call deleted stops counting.
    sqlx::query("DELETE FROM call_sessions WHERE call_sid = $1")
        .bind(&calls[5])
        .execute(&w.pool)
        .await
        .expect("delete a live call");
    assert_eq!(counters(&w, &seeded).await, (3, 3));
    // The safety net releases the rest at once.
    let released: i64 = sqlx::query_scalar("SELECT release_overdue_calls(interval '0 seconds')")
        .fetch_one(&w.pool)
        .await
        .expect("release overdue calls");
    assert_eq!(released, 3);
    assert_eq!(counters(&w, &seeded).await, (0, 0));

    // Without a limit nothing is kept; a limit set starts from a count.
    set_tenant_limit(&w.pool, seeded.tenant_id, None).await;
    for call in [sid(51, 0), sid(51, 1)] {
        assert_eq!(ring(&w, &base, &call, &seeded.e164).await, Answer::Admitted);
    }
    assert_eq!(counters(&w, &seeded).await, (0, 2));
    set_tenant_limit(&w.pool, seeded.tenant_id, Some(2)).await;
    assert_eq!(counters(&w, &seeded).await, (2, 2));
    assert_eq!(
        ring(&w, &base, &sid(51, 2), &seeded.e164).await,
        Answer::Refused,
        "the counter a limit starts from is what admission reads"
    );

    // A counter off (written by hand) is recounted under its lock.
    sqlx::query("UPDATE tenants SET live_calls = 40 WHERE id = $1")
        .bind(seeded.tenant_id)
        .execute(&w.pool)
        .await
        .expect("put the counter off");
    assert_eq!(
        dispatch_worker::expiry::recount_live_calls_once(&w.pool)
            .await
            .expect("recount"),
        1
    );
    assert_eq!(counters(&w, &seeded).await, (2, 2));
    assert_eq!(
        dispatch_worker::expiry::recount_live_calls_once(&w.pool)
            .await
            .expect("recount"),
        0,
        "nothing is off any more"
    );
    w.delete_streams().await;
}
