//! The plan guard: which indexes a flow's statements really read through,
//! as Postgres plans them on a freshly migrated, empty database for
//! connections that keep their plans.
//!
//! [`capture_plans`] sets the test database so that every new connection
//! loads `auto_explain`, logs the plan of every statement it runs (the
//! foreign-key checks and PL/pgSQL statements inside them included) as a
//! notice, and uses generic plans only (`plan_cache_mode =
//! force_generic_plan`): the plan a pooled connection keeps once it has run
//! a statement a few times. The flow then runs through the real binaries'
//! code; [`CapturedPlans::per_call_violations`] lists every read of a
//! per-call table that could grow with the table: a sequential scan, or an
//! index that does not pin one row with all its key columns.
//!
//! sqlx reports notices as `tracing` events (target
//! `sqlx::postgres::notice`); the capture is a process-wide subscriber, so
//! guard tests sharing a test binary take turns ([`exclusive`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use sqlx::PgPool;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Tables that gain rows with every call: a read of one of them that is not
/// pinned to one row by a key costs more as the deployment grows.
pub const PER_CALL_TABLES: &[&str] = &[
    "call_sessions",
    "call_events",
    "transcript_segments",
    "recordings",
    "tool_executions",
    "runtime_dispatches",
    "webhook_messages",
    "webhook_deliveries",
    "webhook_attempts",
];

/// Statements that name one of these are the KPI compaction's
/// (`shared::kpi_rollups`): a background job, not per call, that reads the
/// rows of the hours it computes by range, and plans every run with its
/// values (unnamed statements); see docs/decisions/0047-kpi-rollups.md.
const BACKGROUND_TABLES: &[&str] = &["kpi_counts", "kpi_histograms", "kpi_rollup_progress"];

static NOTICES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();

static ONE_GUARD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole guard test: the notices are collected process-wide, so
/// two guard tests at once would read each other's plans.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_GUARD_AT_A_TIME.lock().await
}

fn notices() -> &'static Mutex<Vec<String>> {
    NOTICES.get_or_init(|| Mutex::new(Vec::new()))
}

struct NoticeLayer;

struct MessageVisitor(Option<String>);

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for NoticeLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::postgres::notice" {
            return;
        }
        let mut visitor = MessageVisitor(None);
        event.record(&mut visitor);
        if let Some(message) = visitor.0 {
            notices()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(message);
        }
    }
}

/// One table read in a captured plan.
#[derive(Debug, Clone)]
pub struct TableRead {
    /// The statement's text, as Postgres logged it.
    pub statement: String,
    pub table: String,
    /// `Seq Scan`, `Index Scan`, `Index Only Scan` or `Bitmap Heap Scan`.
    pub node: String,
    pub index: Option<String>,
    /// The index condition, e.g. `(id = $1)`.
    pub index_cond: Option<String>,
}

/// Sets the test database up for capture (every connection opened from now
/// on) and installs the process-wide notice subscriber. Returns a pool of
/// such connections, for the flow under test; `pool` itself stays outside
/// the capture, for the test's own checks.
///
/// # Panics
/// When the database cannot be altered: a test set-up error.
pub async fn capture_plans(pool: &PgPool) -> PgPool {
    // A second install (another test in the same binary) keeps the first.
    let subscriber = tracing_subscriber::registry().with(NoticeLayer);
    let _ = tracing::subscriber::set_global_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    for setting in [
        "session_preload_libraries = 'auto_explain'",
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_level = notice",
        "auto_explain.log_format = json",
        "plan_cache_mode = force_generic_plan",
    ] {
        // The settings are this function's own constants.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {}', current_database()); END $$",
            setting.replace('\'', "''")
        )))
        .execute(pool)
        .await
        .expect("the test database takes the capture settings");
    }
    notices()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("a capturing pool")
}

/// Every plan captured since [`capture_plans`].
pub fn captured() -> CapturedPlans {
    let notices = notices()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut reads = Vec::new();
    for notice in notices {
        let Some(json) = notice.find('{').map(|at| &notice[at..]) else {
            continue;
        };
        let Ok(plan) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        let statement = plan["Query Text"].as_str().unwrap_or_default().to_owned();
        collect(&plan["Plan"], &statement, &mut reads);
    }
    CapturedPlans { reads }
}

fn collect(node: &serde_json::Value, statement: &str, reads: &mut Vec<TableRead>) {
    let text = |key: &str| node[key].as_str().map(str::to_owned);
    if let (Some(kind), Some(table)) = (text("Node Type"), text("Relation Name")) {
        let mut read = TableRead {
            statement: statement.to_owned(),
            table,
            node: kind.clone(),
            index: text("Index Name"),
            index_cond: text("Index Cond"),
        };
        // A bitmap scan names its index on the child node.
        if kind == "Bitmap Heap Scan"
            && let Some(child) = node["Plans"].as_array().and_then(|p| p.first())
        {
            read.index = child["Index Name"].as_str().map(str::to_owned);
            read.index_cond = child["Index Cond"].as_str().map(str::to_owned);
        }
        if kind.contains("Scan") {
            reads.push(read);
        }
    }
    if let Some(children) = node["Plans"].as_array() {
        for child in children {
            collect(child, statement, reads);
        }
    }
}

/// The table reads of the captured plans.
#[derive(Debug, Clone)]
pub struct CapturedPlans {
    pub reads: Vec<TableRead>,
}

impl CapturedPlans {
    /// Reads of `table` whose statement contains `needle`.
    pub fn reads_of(&self, table: &str, needle: &str) -> Vec<&TableRead> {
        self.reads
            .iter()
            .filter(|r| r.table == table && r.statement.contains(needle))
            .collect()
    }

    /// Fails the test, listing them, when [`Self::per_call_violations`]
    /// finds any.
    ///
    /// # Panics
    /// When a per-call read can grow with its table.
    pub async fn assert_per_call_reads_pin_one_row(&self, pool: &PgPool, bounded: &[&str]) {
        let violations = self.per_call_violations(pool, bounded).await;
        assert!(
            violations.is_empty(),
            "per-call reads that grow with the tables:\n{}",
            violations.join("\n")
        );
    }

    /// Every read of a per-call table that can cost more as the table grows:
    /// a sequential scan, or an index scan that does not bind every key
    /// column of a unique index by equality. `bounded` names the non-unique
    /// indexes a flow reads on purpose, with a range bounded by one call
    /// (the per-call rate window) or by a backlog (the relay's partial
    /// indexes).
    ///
    /// # Panics
    /// When the index catalogue cannot be read: a test set-up error.
    pub async fn per_call_violations(&self, pool: &PgPool, bounded: &[&str]) -> Vec<String> {
        let keys: HashMap<String, (bool, Vec<String>)> =
            sqlx::query_as::<_, (String, bool, Vec<String>)>(
                "SELECT i.relname::text, x.indisunique,
                    array(SELECT a.attname::text FROM unnest(x.indkey[0:x.indnkeyatts - 1]) k
                          JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k)
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
             JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = 'public'",
            )
            .fetch_all(pool)
            .await
            .expect("the index catalogue")
            .into_iter()
            .map(|(name, unique, columns)| (name, (unique, columns)))
            .collect();
        let mut violations = Vec::new();
        for read in &self.reads {
            if !PER_CALL_TABLES.contains(&read.table.as_str())
                || BACKGROUND_TABLES.iter().any(|t| read.statement.contains(t))
            {
                continue;
            }
            let verdict = match &read.index {
                None => Some(format!("{} (no index)", read.node)),
                Some(index) if bounded.contains(&index.as_str()) => None,
                Some(index) => match keys.get(index) {
                    Some((true, columns))
                        if columns.iter().all(|c| {
                            read.index_cond
                                .as_deref()
                                .is_some_and(|cond| cond.contains(&format!("({c} = ")))
                        }) =>
                    {
                        None
                    }
                    _ => Some(format!(
                        "{} using {index} on {}",
                        read.node,
                        read.index_cond.as_deref().unwrap_or("no condition")
                    )),
                },
            };
            if let Some(verdict) = verdict {
                violations.push(format!(
                    "{}: {verdict}\n    in: {}",
                    read.table,
                    read.statement
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        }
        violations.sort();
        violations.dedup();
        violations
    }
}
