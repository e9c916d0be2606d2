//! The long-running roles: `fleet worker`, `fleet serve`, `fleet scheduler`, and the
//! `fleet migrate` deploy step.

use super::usage;
use std::sync::Arc;

use crate::{config::Settings, database, fleet_registry, Worker};
use anyhow::bail;
use tokio_util::sync::CancellationToken;

use super::{databases_for, output, spawn_signal_handler};

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Handlers at once (overrides worker.concurrency).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Queues to serve, comma-separated (overrides worker.queues; default all).
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Also serve the admin endpoints (/livez, /readyz, /metrics) on this address (e.g.
    /// 127.0.0.1:9100).
    #[arg(long)]
    metrics_bind: Option<std::net::SocketAddr>,
    /// Databases to claim jobs from, comma-separated: `main` and `[databases.*]` names
    /// (default: every configured database). Handlers always use `main` for domain tables.
    #[arg(long, value_delimiter = ',')]
    databases: Option<Vec<String>>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Public address: the webhook ingress only (overrides serve.bind).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Admin address: /livez, /readyz, /metrics and the console (overrides serve.admin_bind).
    /// Keep it off the public network.
    #[arg(long)]
    admin_bind: Option<std::net::SocketAddr>,
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// List every migration (applied, pending, unknown to this binary) and change nothing.
    #[arg(long)]
    status: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Who is acting (recorded in audit_log; default: the OS user).
    #[arg(long)]
    actor: Option<String>,
}

pub async fn migrate(a: MigrateArgs, settings: &Settings) -> anyhow::Result<()> {
    // Migrations hold a session advisory lock: behind a transaction pooler they run on the
    // direct connection (and refuse without one).
    let main = database::Reach::main(&settings.database)?;
    let pool = main.open_for_migrations().await?;
    if !settings.databases.is_empty() && !a.status {
        // The same migrations everywhere: a jobs-only database carries the domain tables too,
        // empty, so one binary checks one schema.
        for (name, d) in &settings.databases {
            let reach = database::Reach::of(name, d, &settings.database)?;
            let p = reach.open_for_migrations().await?;
            let applied = database::migrate_pending(&p).await?;
            eprintln!("databases.{name}: applied {} migration(s)", applied.len());
        }
    }
    if a.status {
        let status = database::migration_status(&pool).await?.unwrap_or_else(|| {
            // Never migrated: everything this binary has is pending.
            database::MIGRATOR
                .iter()
                .map(|m| database::MigrationStatus {
                    version: m.version,
                    description: m.description.to_string(),
                    state: "pending",
                    applied_on: None,
                })
                .collect()
        });
        let mut t = output::table(&["version", "migration", "state", "applied"]);
        for m in &status {
            t.add_row(vec![
                m.version.to_string(),
                m.description.clone(),
                m.state.to_owned(),
                m.applied_on.map(output::when).unwrap_or_else(|| "-".into()),
            ]);
        }
        return output::emit(a.json, &status, &t.to_string());
    }
    let applied = database::migrate_pending(&pool).await?;
    let actor = a.actor.unwrap_or_else(super::os_user);
    crate::queue::audit_record(
        &pool,
        &actor,
        "schema.migrate",
        "schema",
        None,
        &serde_json::json!({ "applied": applied }),
    )
    .await?;
    let text = if applied.is_empty() {
        "the schema is up to date: nothing to apply".to_owned()
    } else {
        format!(
            "applied {} migration(s): {}",
            applied.len(),
            applied
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    output::emit(a.json, &serde_json::json!({ "applied": applied }), &text)
}

/// What a worker gives its handlers: the domain's [`jobs::Deps`]: the PII keys
/// ([`pii_keys`]) and the provider clients from `[providers.*]`.
fn handler_extensions(settings: &Settings) -> anyhow::Result<jobs::Extensions> {
    Ok(jobs::Extensions::new().with(handler_deps(settings)?))
}

/// The domain's [`jobs::Deps`] from settings (see [`handler_extensions`]).
fn handler_deps(settings: &Settings) -> anyhow::Result<jobs::Deps> {
    Ok(
        jobs::Deps::with_key_service(&settings.providers, pii_keys(settings)?)
            .map_err(|e| crate::config::ConfigError::general(e.0))?,
    )
}

/// Where the PII keys come from: KMS-wrapped data keys when `[providers.kms]` has a secret
/// (then `FLEET_PII_KEYS` is not read), else the keyring in `FLEET_PII_KEYS` (required then).
/// `fleet seed` seals with the same keys as the workers.
pub(crate) fn pii_keys(settings: &Settings) -> anyhow::Result<jobs::pii_keys::KeyService> {
    let kms = &settings.providers.kms;
    if kms.secret_access_key.is_empty() {
        let keyring = jobs::pii::Keyring::from_env()
            .map_err(|e| crate::config::ConfigError::new("FLEET_PII_KEYS", e.to_string()))?;
        return Ok(jobs::pii_keys::KeyService::Env(std::sync::Arc::new(
            keyring,
        )));
    }
    let client = jobs::providers::kms::AwsKms::new(kms)
        .map_err(|e| crate::config::ConfigError::new("providers.kms", e.0))?;
    Ok(jobs::pii_keys::KeyService::kms(
        std::sync::Arc::new(client),
        &kms.key_id,
        kms.cache_ttl,
    ))
}

pub async fn worker(a: WorkerArgs, mut settings: Settings) -> anyhow::Result<()> {
    if let Some(c) = a.concurrency {
        if c == 0 {
            usage!("--concurrency must be >= 1");
        }
        settings.worker.concurrency = c;
    }
    if let Some(q) = a.queues {
        settings.worker.queues = q;
    }
    let registry = Arc::new(fleet_registry(&settings)?);
    // A queue no kind uses would start a worker that never claims anything.
    let used = registry.queues();
    if let Some(q) = settings.worker.queues.iter().find(|q| !used.contains(q)) {
        return Err(crate::config::ConfigError::new(
            "worker.queues",
            format!(
                "worker.queues: no registered kind uses queue {q:?} (queues in use: {})",
                used.join(", ")
            ),
        )
        .into());
    }
    let extensions = handler_extensions(&settings)?;
    let dbs = databases_for(&settings).await?;
    let served: Vec<crate::databases::Database> = match &a.databases {
        None => dbs.all().cloned().collect(),
        Some(names) => {
            let mut v = Vec::new();
            for n in names {
                match dbs.get(n) {
                    Some(d) => v.push(d.clone()),
                    None => usage!(
                        "--databases: {n:?} is not configured (databases: {})",
                        dbs.names().join(", ")
                    ),
                }
            }
            v
        }
    };
    let main_db = dbs.main.db.clone();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    if let Some(bind) = a.metrics_bind {
        let listener = bind_listener(bind, "--metrics-bind").await?;
        let limits = crate::serve::Limits::from(&settings.serve);
        crate::snapshot::watch_budgets(registry.budgets());
        tokio::spawn(crate::snapshot::run_snapshots(
            served.clone(),
            settings.serve.metrics_refresh,
            shutdown.clone(),
        ));
        let router = crate::serve::harden(crate::serve::admin_router(main_db.clone()), &limits);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::serve::run_with(listener, router, &limits, stop).await {
                tracing::error!(error = %e, "admin endpoint failed");
            }
        });
    }
    for d in &served {
        if let Some(why) = crate::queue::job_table_autovacuum_off(&d.db).await? {
            tracing::warn!(
                database = %d.name,
                "autovacuum will not clean fleet_jobs: {why}; every job leaves dead row versions, so the queue slows down as they pile up (docs/operations.md, \"Vacuum\")"
            );
        }
    }
    // One runtime per served database: its own claims, leases, heartbeat and maintenance;
    // every handler gets the main database and the routing queue.
    let queue = crate::Queue::of_fleet(&dbs, registry.clone());
    let runs: Vec<_> = served
        .iter()
        .map(|d| {
            let w = Worker::new(d.db.clone(), registry.clone(), settings.worker.clone())
                .with_extensions(extensions.clone())
                .serving_database(&d.name, main_db.clone(), queue.clone());
            tokio::spawn(w.run(shutdown.clone()))
        })
        .collect();
    let mut unwritten = 0;
    for r in futures::future::join_all(runs).await {
        match r {
            Ok(r) => unwritten += r.unwritten,
            Err(e) => bail!("a worker runtime failed: {e}"),
        }
    }
    if unwritten > 0 {
        bail!(
            "{unwritten} outcomes could not be written; their jobs will be rescued after their leases expire"
        );
    }
    Ok(())
}

/// Binds `addr` for `what`, naming both when it cannot (in use, not ours to bind).
async fn bind_listener(
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::cli::UsageError(format!("{what}: cannot listen on {addr}: {e}")).into())
}

pub async fn serve(a: ServeArgs, settings: &Settings) -> anyhow::Result<()> {
    let secrets = crate::webhooks::WebhookSecrets::from_env()?;
    let registry = Arc::new(fleet_registry(settings)?);
    let bind = a.bind.unwrap_or(settings.serve.bind);
    let admin_bind = a.admin_bind.unwrap_or(settings.serve.admin_bind);
    if bind == admin_bind && bind.port() != 0 {
        usage!("the public and admin listeners cannot share {bind} (serve.bind, serve.admin_bind)");
    }
    let dbs = databases_for(settings).await?;
    let main_db = dbs.main.db.clone();
    let limits = crate::serve::Limits::from(&settings.serve);
    let open_files = crate::serve::raise_open_files_limit();
    if (open_files as usize) < limits.max_connections * 2 + 64 {
        tracing::warn!(
            open_files,
            max_connections = limits.max_connections,
            "the open-files limit is below twice serve.max_connections: the kernel may refuse connections before the cap does"
        );
    }
    let public = bind_listener(bind, "serve.bind").await?;
    let admin = bind_listener(admin_bind, "serve.admin_bind").await?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    for d in dbs.all() {
        tokio::spawn(crate::database::health::watch(
            d.db.clone(),
            d.name.clone(),
            shutdown.clone(),
        ));
    }
    crate::snapshot::watch_budgets(registry.budgets());
    tokio::spawn(crate::snapshot::run_snapshots(
        dbs.all().cloned().collect(),
        settings.serve.metrics_refresh,
        shutdown.clone(),
    ));
    let webhooks = crate::serve::harden(
        crate::webhooks::router(
            main_db.clone(),
            crate::Queue::of_fleet(&dbs, registry.clone()),
            secrets,
            limits.max_body_bytes,
        ),
        &limits,
    );
    if settings.console.users.is_empty() {
        tracing::warn!("no [console.users.*] are configured: nobody can sign in to the console");
    }
    let schedules = crate::scheduler::validate(&settings.schedules, &registry)?;
    let mut console = crate::console::Console::new(
        main_db.clone(),
        registry,
        settings.console.clone(),
        settings.worker.lease,
    );
    if dbs.main.replica.is_some() {
        console = console.with_reads(dbs.main.reads.clone());
    }
    console = console.with_schedules(schedules);

    let admin_routes = crate::serve::harden(
        crate::serve::admin_router_with_console(main_db, console),
        &limits,
    );
    let (public_done, admin_done) = tokio::join!(
        crate::serve::run_with(public, webhooks, &limits, shutdown.clone()),
        crate::serve::run_with(admin, admin_routes, &limits, shutdown.clone()),
    );
    public_done?;
    admin_done
}

pub async fn scheduler(settings: &Settings) -> anyhow::Result<()> {
    let registry = Arc::new(fleet_registry(settings)?);
    let schedules = crate::scheduler::validate(&settings.schedules, &registry)?;
    if schedules.is_empty() {
        tracing::warn!("no [schedules.*] are enabled: the scheduler will idle");
    }
    let dbs = databases_for(settings).await?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    crate::scheduler::Scheduler::new(dbs.main.db.clone(), registry.clone(), schedules)
        .with_queue(crate::Queue::of_fleet(&dbs, registry))
        .run(shutdown)
        .await?;
    Ok(())
}
