//! Connecting to the fleet's database, migrating it and checking its schema. Scratch databases
//! and the throwaway cluster (the demo's, the benchmarks' and the tests') are in `scratch`,
//! which is not public API (the `testkit` feature exports it).
//!
//! **Roles use an explicit database.** [`connect_configured`] takes `DATABASE_URL` or
//! `database.url` and nothing else; without one it refuses, naming both. The first connection
//! is bounded by `database.connect_timeout`, and a failure names the host, port, database and
//! user (never the password) with the server's reason once. **Roles never migrate**: migrating
//! is the deploy step `fleet migrate`; a role checks the schema at start ([`require_schema`]) and
//! refuses a database that is behind this binary, and starts (logging which) on one that is
//! ahead by migrations it does not know, which is what a rollback leaves.
//!
//! Auto-discovery (`DATABASE_URL`, else the local server, else a throwaway cluster) is for the
//! demo, the benchmarks and the tests only, in `scratch`.

use std::{str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgExecutor, PgPool,
};

pub mod health;
#[cfg(feature = "testkit")]
pub mod scratch;
#[cfg(all(feature = "cli", not(feature = "testkit")))]
pub(crate) mod scratch;
pub mod tls;

pub use tls::TlsInEffect;

use crate::config::TlsSettings;
use jobs::{Db, Pooler};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a role could not use its database. [`DatabaseError::NotConfigured`] and
/// [`DatabaseError::InvalidUrl`] are configuration errors; the rest mean the database cannot be
/// used as it is.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// No URL anywhere.
    #[error(
        "no database configured: set DATABASE_URL (or database.url in the config file); \
         fleet never picks a database by itself"
    )]
    NotConfigured,
    /// The URL does not parse, or its TLS settings are wrong (a mode, a missing file).
    #[error("{0}")]
    InvalidUrl(String),
    /// The first connection failed.
    #[error("cannot connect to the database at {target}: {reason}")]
    Unreachable {
        /// `host:port/database as user`.
        target: String,
        /// The server's or the network's reason, once.
        reason: String,
    },
    /// No migration was ever applied.
    #[error(
        "the database at {target} has no fleet schema: run `fleet migrate` (the deploy step) first"
    )]
    NotMigrated {
        /// `host:port/database as user`.
        target: String,
    },
    /// Migrations this binary needs are not applied.
    #[error(
        "the database schema is behind this binary: {} migration(s) not applied ({}); run \
         `fleet migrate` (the deploy step) first",
        missing.len(),
        missing.join(", ")
    )]
    SchemaBehind {
        /// `version description` of each.
        missing: Vec<String>,
    },
    /// An applied migration differs from this binary's copy.
    #[error(
        "migration {0} was changed after it was applied (its checksum differs): the binary and \
         the database disagree on the schema; deploy the binary that applied it"
    )]
    SchemaModified(String),
    /// The fleet's tables are not where `database.schema` says, on this connection.
    #[error("{0}")]
    WrongSchema(String),
    /// A query of the schema check failed.
    #[error("checking the database schema failed")]
    Query(#[source] sqlx::Error),
    /// Applying the migrations failed (a statement, a lock, a changed migration).
    #[error("running the migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl DatabaseError {
    /// Whether this is a configuration error (exit 2) rather than an unusable database (3).
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::NotConfigured | Self::InvalidUrl(_))
    }
}

/// `host:port/database as user` of `opts`: what an error may name (no password). An IPv6
/// host is bracketed, as in a URL.
pub fn describe_target(opts: &PgConnectOptions) -> String {
    let host = opts.get_host();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!(
        "{host}:{}/{} as {}",
        opts.get_port(),
        opts.get_database().unwrap_or("(default)"),
        opts.get_username()
    )
}

/// The reason a connection failed, said once (sqlx's texts repeat the server's message), with
/// a failed TLS handshake explained ([`tls::explain`]).
fn connect_reason(e: &sqlx::Error, host: &str, tls: Option<&TlsInEffect>) -> String {
    if let Some(why) = tls.and_then(|t| tls::explain(e, host, t)) {
        return why;
    }
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

/// One URL the fleet connects to, parsed, with its TLS resolved (`tls.rs`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The setting it comes from (`database.url`, `databases.search.read_url`), named in errors.
    pub setting: String,
    /// The driver's options (with the password: never printed).
    pub options: PgConnectOptions,
    /// The TLS it uses.
    pub tls: TlsInEffect,
}

impl Endpoint {
    /// Parses `url` (the value of `setting`, in the section `section` whose TLS settings are
    /// `tls_settings`). The error names the setting, never the URL.
    pub fn parse(
        setting: &str,
        section: &str,
        url: &str,
        tls_settings: &TlsSettings,
    ) -> Result<Self, DatabaseError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| {
                DatabaseError::InvalidUrl(format!(
                    "{setting} is not a valid postgres:// URL: {}",
                    connect_reason(&e, "", None)
                ))
            })?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
        let (options, tls) = tls::apply(setting, section, url, tls_settings, options)
            .map_err(DatabaseError::InvalidUrl)?;
        Ok(Self {
            setting: setting.to_owned(),
            options,
            tls,
        })
    }

    /// `host:port/database as user`.
    pub fn target(&self) -> String {
        describe_target(&self.options)
    }

    /// The main database's primary: `DATABASE_URL`, else `database.url`.
    pub fn main(db: &crate::config::DatabaseSettings) -> Result<Self, DatabaseError> {
        let url = db.configured_url().ok_or(DatabaseError::NotConfigured)?;
        let setting = if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
            "DATABASE_URL"
        } else {
            "database.url"
        };
        Self::parse(setting, "database", &url, &db.tls())
    }

    /// The main database's read replica (`DATABASE_READ_URL`, else `database.read_url`), if any.
    pub fn main_reads(db: &crate::config::DatabaseSettings) -> Result<Option<Self>, DatabaseError> {
        let Some(url) = db.configured_read_url() else {
            return Ok(None);
        };
        let setting = if std::env::var("DATABASE_READ_URL").is_ok_and(|u| !u.is_empty()) {
            "DATABASE_READ_URL"
        } else {
            "database.read_url"
        };
        Self::parse(setting, "database", &url, &db.tls()).map(Some)
    }

    /// The primary of `[databases.<name>]` (TLS: its own settings over `[database]`'s).
    pub fn of(
        name: &str,
        d: &crate::config::ExtraDatabase,
        main: &crate::config::DatabaseSettings,
    ) -> Result<Self, DatabaseError> {
        let url = d
            .url
            .as_ref()
            .map(|u| u.expose().to_owned())
            .filter(|u| !u.is_empty())
            .ok_or(DatabaseError::NotConfigured)?;
        Self::parse(
            &format!("databases.{name}.url"),
            &format!("databases.{name}"),
            &url,
            &d.tls(main),
        )
    }

    /// The read replica of `[databases.<name>]`, if any.
    pub fn reads_of(
        name: &str,
        d: &crate::config::ExtraDatabase,
        main: &crate::config::DatabaseSettings,
    ) -> Result<Option<Self>, DatabaseError> {
        let Some(url) = d
            .read_url
            .as_ref()
            .map(|u| u.expose().to_owned())
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        Self::parse(
            &format!("databases.{name}.read_url"),
            &format!("databases.{name}"),
            &url,
            &d.tls(main),
        )
        .map(Some)
    }

    /// The first connection to it, within `timeout`: its error names the target and why.
    async fn first_connection(&self, timeout: Duration) -> Result<PgConnection, DatabaseError> {
        let unreachable = |reason: String| DatabaseError::Unreachable {
            target: self.target(),
            reason,
        };
        match tokio::time::timeout(timeout, PgConnection::connect_with(&self.options)).await {
            Err(_) => Err(unreachable(format!(
                "no answer within {} (database.connect_timeout)",
                humantime::format_duration(timeout)
            ))),
            Ok(Err(e)) => Err(unreachable(connect_reason(
                &e,
                self.options.get_host(),
                Some(&self.tls),
            ))),
            Ok(Ok(c)) => Ok(c),
        }
    }
}

/// How one of the fleet's databases is reached: its primary's URL, what that URL reaches, the
/// direct connection beside it, and the statement bound. Built from `[database]` or a
/// `[databases.*]` entry ([`Reach::main`], [`Reach::of`]).
#[derive(Debug, Clone)]
pub struct Reach {
    /// The primary's URL.
    pub primary: Endpoint,
    /// What that URL reaches.
    pub pooler: Pooler,
    /// A direct connection beside a transaction pooler (sessions), if configured.
    pub direct: Option<Endpoint>,
    /// Pool size.
    pub max_connections: u32,
    /// The first connection's bound.
    pub connect_timeout: Duration,
    /// Every engine statement's bound.
    pub statement_timeout: Duration,
    /// The schema of the fleet's tables.
    pub schema: String,
}

impl Reach {
    /// The main database (`[database]`, `DATABASE_URL`, `DATABASE_DIRECT_URL`).
    pub fn main(db: &crate::config::DatabaseSettings) -> Result<Self, DatabaseError> {
        let direct = match db.configured_direct_url() {
            None => None,
            Some(url) => {
                let setting = if std::env::var("DATABASE_DIRECT_URL").is_ok_and(|u| !u.is_empty()) {
                    "DATABASE_DIRECT_URL"
                } else {
                    "database.direct_url"
                };
                Some(Endpoint::parse(setting, "database", &url, &db.tls())?)
            }
        };
        Ok(Self {
            primary: Endpoint::main(db)?,
            pooler: db.pooler,
            direct,
            max_connections: db.max_connections,
            connect_timeout: db.connect_timeout,
            statement_timeout: db.statement_timeout,
            schema: db.schema.clone(),
        })
    }

    /// `[databases.<name>]` (its pooler, else `[database]`'s; pool sizes and bounds are
    /// `[database]`'s).
    pub fn of(
        name: &str,
        d: &crate::config::ExtraDatabase,
        main: &crate::config::DatabaseSettings,
    ) -> Result<Self, DatabaseError> {
        let direct = d
            .direct_url
            .as_ref()
            .map(|u| u.expose().to_owned())
            .filter(|u| !u.is_empty())
            .map(|url| {
                Endpoint::parse(
                    &format!("databases.{name}.direct_url"),
                    &format!("databases.{name}"),
                    &url,
                    &d.tls(main),
                )
            })
            .transpose()?;
        Ok(Self {
            primary: Endpoint::of(name, d, main)?,
            pooler: d.pooler.unwrap_or(main.pooler),
            direct,
            max_connections: main.max_connections,
            connect_timeout: main.connect_timeout,
            statement_timeout: main.statement_timeout,
            schema: main.schema.clone(),
        })
    }

    /// Where migrations run: they hold a session advisory lock while they apply, so behind a
    /// transaction pooler they need the direct connection.
    pub fn for_migrations(&self) -> Result<&Endpoint, DatabaseError> {
        match (&self.direct, self.pooler) {
            (Some(d), _) => Ok(d),
            (None, Pooler::Transaction) => Err(DatabaseError::InvalidUrl(format!(
                "{} reaches a transaction pooler (pooler = \"transaction\"), where migrations \
                 cannot hold their lock: set the direct connection (database.direct_url or \
                 DATABASE_DIRECT_URL; on Supabase, the direct connection or the session pooler \
                 on port 5432)",
                self.primary.setting
            ))),
            (None, _) => Ok(&self.primary),
        }
    }

    /// Opens it: the pool (its statement cache off behind a transaction pooler, so only the
    /// unnamed statement is used), the session pool on the direct connection (connected on
    /// first use), the statement bound. Logs, once, where it connected, how, and with which
    /// TLS.
    pub async fn open(&self) -> Result<Db, DatabaseError> {
        let pooled = self.pooler == Pooler::Transaction;
        let mut primary = self.primary.clone();
        if pooled {
            // No named statements; and no `extra_float_digits` startup parameter, which
            // PgBouncer refuses unless told to ignore it (Postgres 12+ prints floats exactly
            // without it).
            primary.options = primary
                .options
                .statement_cache_capacity(0)
                .extra_float_digits(None);
        }
        let sessions_schema = Some(self.schema.as_str());
        let pool = connect_endpoint_in(
            &primary,
            self.max_connections,
            self.connect_timeout,
            if pooled { None } else { sessions_schema },
        )
        .await?;
        let db = if pooled {
            let sessions = self.direct.as_ref().map(|d| {
                tracing::info!(setting = %d.setting, target = %d.target(), tls = %d.tls,
                    "sessions (LISTEN, claim sessions, campaign locks) use the direct connection");
                session_pool_options(sessions_schema)
                    .max_connections(DIRECT_POOL_SIZE)
                    .acquire_timeout(self.connect_timeout)
                    .connect_lazy_with(d.options.clone())
            });
            if sessions.is_none() {
                tracing::warn!(
                    setting = %primary.setting,
                    "behind a transaction pooler with no direct connection: workers poll for \
                     new jobs instead of listening, claim in a transaction per round, and the \
                     booking saga takes no campaign lock (database.direct_url)"
                );
            }
            Db::behind_transaction_pooler(pool, sessions)
        } else if self.pooler == Pooler::Session {
            Db::direct(pool).through_session_pooler()
        } else {
            Db::direct(pool)
        };
        let db = db.with_statement_timeout(Some(self.statement_timeout));
        require_search_path(&db, &self.schema).await?;
        match tables_hidden_by_row_security(&db).await {
            Ok(hidden) if !hidden.is_empty() => tracing::warn!(
                setting = %self.primary.setting, tables = %hidden.join(", "),
                "row-level security is on for these tables and this role has no policy on them \
                 (nor BYPASSRLS): it reads and writes none of their rows; see \
                 docs/operations.md, \"Row-level security\""
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checking row-level security failed"),
        }
        Ok(db)
    }

    /// A pool for `fleet migrate` (on [`Reach::for_migrations`]), in the fleet's schema: created
    /// first if missing and the role may; its sessions put it first on their `search_path`, so
    /// everything the migrations create lands in it (their table of applied migrations too).
    pub async fn open_for_migrations(&self) -> Result<PgPool, DatabaseError> {
        let endpoint = self.for_migrations()?;
        let pool =
            connect_endpoint_in(endpoint, 2, self.connect_timeout, Some(&self.schema)).await?;
        if self.schema != "public" {
            let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
                .bind(&self.schema)
                .fetch_one(&pool)
                .await
                .map_err(DatabaseError::Query)?;
            if !exists {
                // A validated identifier (config::is_schema_name): safe to splice.
                let create = format!("CREATE SCHEMA {}", self.schema);
                sqlx::query(AssertSqlSafe(create))
                    .execute(&pool)
                    .await
                    .map_err(|e| {
                        DatabaseError::WrongSchema(format!(
                        "database.schema is {:?} and it does not exist, and the migrating role \
                         may not create it ({}): run CREATE SCHEMA {} AUTHORIZATION <the \
                         migrating role> as a role that may, then migrate again",
                        self.schema,
                        connect_reason(&e, "", None),
                        self.schema
                    ))
                    })?;
                tracing::info!(schema = %self.schema, "created the fleet's schema");
            }
        }
        Ok(pool)
    }
}

/// How long a connection back in the pool counts as checked: one lent again within it is not
/// pinged first.
///
/// sqlx pings every connection as it goes back to its pool (a connection that fails that is
/// closed), and by default pings it again before lending it. A busy pool lends a connection
/// milliseconds after it came back, so the second ping is a round trip in front of every
/// statement on the handle that checks what was checked moments ago: in front of each enqueue
/// call of a producer, for one. A connection idle for longer is pinged before it is lent, as
/// before (a server that restarted meanwhile, a connection a proxy dropped). HikariCP skips
/// its check in the same way, for 500 ms (`aliveBypassWindowMs`). What it costs: a connection
/// lent within the window after its server died fails its caller's first statement, as a
/// statement in flight when the server died does, and is closed on its way back (decision 61).
pub const RECENTLY_CHECKED: Duration = Duration::from_millis(500);

/// Options every pool of the fleet starts from: a connection is pinged before it is lent
/// only if it sat idle longer than [`RECENTLY_CHECKED`].
pub fn pool_options() -> PgPoolOptions {
    pool_options_checking_idle_over(RECENTLY_CHECKED)
}

/// [`pool_options`] with another window (tests; `Duration::ZERO` pings before every lending,
/// as sqlx's default does).
pub fn pool_options_checking_idle_over(window: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for > window {
                    if let Err(e) = conn.ping().await {
                        // Gone while idle: the pool closes it and lends or opens another.
                        // Not a warning (sqlx warns of an error returned here, once per
                        // connection): the health monitor says once that the database went.
                        tracing::debug!(error = %e, "an idle pooled connection failed its ping");
                        return Ok(false);
                    }
                }
                Ok(true)
            })
        })
}

/// Connections of a session pool beside a transaction pooler. Its users take connections out
/// of it for good (claim sessions, campaign locks) or open their own (`LISTEN`), so this bounds
/// only what is waiting in it.
const DIRECT_POOL_SIZE: u32 = 4;

/// The configured main database (`DATABASE_URL`, else `database.url`), opened
/// ([`Reach::open`]): the first connection within `database.connect_timeout`, or an error
/// naming the target and the reason.
pub async fn connect_configured(db: &crate::config::DatabaseSettings) -> Result<Db, DatabaseError> {
    Reach::main(db)?.open().await
}

/// A pool of `max` connections to `endpoint`, the first connection within `timeout`. Logs,
/// once, where it connected and with which TLS.
pub async fn connect_endpoint(
    endpoint: &Endpoint,
    max: u32,
    timeout: Duration,
) -> Result<PgPool, DatabaseError> {
    connect_endpoint_in(endpoint, max, timeout, None).await
}

/// [`connect_endpoint`], each connection's session putting `schema` first on its
/// `search_path` (only where connections are sessions: never behind a transaction pooler).
async fn connect_endpoint_in(
    endpoint: &Endpoint,
    max: u32,
    timeout: Duration,
    schema: Option<&str>,
) -> Result<PgPool, DatabaseError> {
    // One connection first: its error says why, where the pool would only time out.
    let first = endpoint.first_connection(timeout).await?;
    let _ = first.close().await;
    let pool = session_pool_options(schema)
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(endpoint.options.clone())
        .await
        .map_err(|e| DatabaseError::Unreachable {
            target: endpoint.target(),
            reason: connect_reason(&e, endpoint.options.get_host(), Some(&endpoint.tls)),
        })?;
    if endpoint.tls.mode == crate::config::SslMode::Prefer {
        tracing::info!(
            setting = %endpoint.setting, target = %endpoint.target(), tls = %endpoint.tls,
            "connected to the database (sslmode=prefer: set verify-full for a managed database)"
        );
    } else {
        tracing::info!(
            setting = %endpoint.setting, target = %endpoint.target(), tls = %endpoint.tls,
            "connected to the database"
        );
    }
    Ok(pool)
}

/// Pool options whose connections put `schema` (a validated identifier) first on their
/// session's `search_path`, then `public`.
fn session_pool_options(schema: Option<&str>) -> PgPoolOptions {
    let options = pool_options();
    let Some(schema) = schema.filter(|s| *s != "public") else {
        return options;
    };
    let path = format!("{schema}, public");
    options.after_connect(move |conn, _| {
        let path = path.clone();
        Box::pin(async move {
            sqlx::query("SELECT set_config('search_path', $1, false)")
                .bind(path)
                .execute(conn)
                .await?;
            Ok(())
        })
    })
}

/// Tables on the connection's `search_path` that this role may read but whose rows
/// row-level security hides from it entirely: RLS on (or forced on their owner), no policy
/// naming the role (or `PUBLIC`, or a role it belongs to), and the role neither a superuser,
/// nor `BYPASSRLS`, nor one with its owner's privileges. A fleet in that state sees no campaign
/// and books nothing, silently; the roles say so at start.
pub async fn tables_hidden_by_row_security(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.relname::text
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_roles me ON me.rolname = current_user
         WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity
           AND n.nspname = ANY (current_schemas(false))
           AND NOT me.rolsuper AND NOT me.rolbypassrls
           AND (NOT pg_has_role(me.oid, c.relowner, 'USAGE') OR c.relforcerowsecurity)
           AND has_table_privilege(me.oid, c.oid, 'SELECT')
           AND NOT EXISTS (
               SELECT 1 FROM pg_policy p
               WHERE p.polrelid = c.oid
                 AND (0 = ANY (p.polroles)
                      OR EXISTS (SELECT 1 FROM unnest(p.polroles) r
                                 WHERE pg_has_role(me.oid, r, 'MEMBER'))))
         ORDER BY 1",
    )
    .fetch_all(db)
    .await
}

/// Checks that `db`'s connections find the fleet's tables in `schema`: first on their
/// `search_path` (set by the session, or behind a transaction pooler by the role). The error
/// says what to run.
pub async fn require_search_path(db: &Db, schema: &str) -> Result<(), DatabaseError> {
    if schema == "public" {
        return Ok(());
    }
    let (schemas, exists, user): (Vec<String>, bool, String) = sqlx::query_as(
        "SELECT current_schemas(false)::text[], to_regnamespace($1) IS NOT NULL, current_user::text",
    )
    .bind(schema)
    .fetch_one(db)
    .await
    .map_err(DatabaseError::Query)?;
    if !exists {
        return Err(DatabaseError::WrongSchema(format!(
            "database.schema is {schema:?}, and the database has no such schema: run `fleet \
             migrate` (it creates it when its role may; else CREATE SCHEMA {schema} \
             AUTHORIZATION <the migrating role>)"
        )));
    }
    if schemas.first().map(String::as_str) != Some(schema) {
        return Err(DatabaseError::WrongSchema(format!(
            "database.schema is {schema:?}, but this connection's search_path starts with {} \
             (behind a transaction pooler no session can set it): run ALTER ROLE {user} SET \
             search_path = {schema}, public",
            schemas
                .first()
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "nothing".to_owned())
        )));
    }
    Ok(())
}

/// One migration as the database and this binary see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStatus {
    /// Its version (the file's timestamp).
    pub version: i64,
    /// Its description (the file name's rest).
    pub description: String,
    /// `applied`, `pending` (this binary has it, the database not), `unknown` (applied by a
    /// newer binary: a rollback), `modified` (applied, but the binary's copy differs).
    pub state: &'static str,
    /// When it was applied.
    pub applied_on: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every migration this binary knows or the database has applied, in version order. `None`
/// when the database has no migrations table at all.
pub async fn migration_status(
    pool: impl PgExecutor<'_> + Copy,
) -> Result<Option<Vec<MigrationStatus>>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    let applied: Vec<(i64, String, Vec<u8>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT version, description, checksum, installed_on FROM _sqlx_migrations
         WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await?;
    let mut out: Vec<MigrationStatus> = MIGRATOR
        .iter()
        .map(|m| {
            let found = applied.iter().find(|a| a.0 == m.version);
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                state: match found {
                    None => "pending",
                    Some(a) if a.2 != m.checksum.as_ref() => "modified",
                    Some(_) => "applied",
                },
                applied_on: found.map(|a| a.3),
            }
        })
        .collect();
    for a in &applied {
        if MIGRATOR.iter().all(|m| m.version != a.0) {
            out.push(MigrationStatus {
                version: a.0,
                description: a.1.clone(),
                state: "unknown",
                applied_on: Some(a.3),
            });
        }
    }
    out.sort_by_key(|m| m.version);
    Ok(Some(out))
}

/// Refuses a database whose schema this binary cannot run on: never migrated, behind (run
/// `fleet migrate`), or an applied migration changed. A database ahead by migrations this
/// binary does not know (a rollback) is accepted; they are returned so the role can log them.
pub async fn require_schema(db: &Db) -> Result<Vec<MigrationStatus>, DatabaseError> {
    let status = migration_status(db).await.map_err(DatabaseError::Query)?;
    let Some(status) = status else {
        let target = db.session_independent_pool().connect_options();
        return Err(DatabaseError::NotMigrated {
            target: describe_target(&target),
        });
    };
    if let Some(m) = status.iter().find(|m| m.state == "modified") {
        return Err(DatabaseError::SchemaModified(format!(
            "{} {}",
            m.version, m.description
        )));
    }
    let missing: Vec<String> = status
        .iter()
        .filter(|m| m.state == "pending")
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        return Err(DatabaseError::SchemaBehind { missing });
    }
    let ahead: Vec<MigrationStatus> = status
        .into_iter()
        .filter(|m| m.state == "unknown")
        .collect();
    for m in &ahead {
        tracing::warn!(
            migration.version = m.version,
            migration.description = %m.description,
            "the database has a migration this binary does not know (a rollback?): starting anyway"
        );
    }
    Ok(ahead)
}

/// Applies this binary's pending migrations (the deploy step). Migrations the database has
/// but this binary does not (a rollback) are left in place. Returns the versions applied.
pub async fn migrate_pending(pool: &PgPool) -> Result<Vec<i64>, DatabaseError> {
    let before: Vec<i64> = match migration_status(pool).await.map_err(DatabaseError::Query)? {
        None => MIGRATOR.iter().map(|m| m.version).collect(),
        Some(s) => s
            .iter()
            .filter(|m| m.state == "pending")
            .map(|m| m.version)
            .collect(),
    };
    let mut m: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
    m.set_ignore_missing(true);
    m.run(pool).await.map_err(DatabaseError::Migrate)?;
    Ok(before)
}

/// A pool of `max` connections to `url`, with statement logging quietened (scratch databases,
/// tools). The error names the target, never the password.
pub async fn connect(url: &str, max: u32) -> Result<PgPool, DatabaseError> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| DatabaseError::InvalidUrl(format!("not a valid postgres URL: {e}")))?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    pool_options()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts.clone())
        .await
        .map_err(|e| DatabaseError::Unreachable {
            target: describe_target(&opts),
            reason: connect_reason(&e, opts.get_host(), None),
        })
}

/// Applies the embedded migrations (scratch databases; roles use `fleet migrate`).
pub async fn migrate(pool: &PgPool) -> Result<(), DatabaseError> {
    MIGRATOR.run(pool).await.map_err(DatabaseError::Migrate)
}
