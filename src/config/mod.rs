//! Settings: what each role is configured with (this file: the types, each field documented
//! in config/default.toml) and where the values come from (`load.rs`: the embedded
//! `config/default.toml`, then an optional file (`--config`), then `FLEET_*` environment
//! variables; validation; provenance for `fleet config show`).
//!
//! **Environment encoding.** `FLEET_` + the key's path, segments joined by `__`, in upper case:
//! `FLEET_WORKER__CONCURRENCY=32` is `worker.concurrency`. A `.` inside a segment (kind names
//! such as `fleet.sleep`) is written `_DOT_`: `FLEET_KINDS__FLEET_DOT_SLEEP__CONCURRENCY=4` is
//! `[kinds."fleet.sleep"] concurrency = 4`. `FLEET_WORKER__QUEUES=a,b` is a list.
//!
//! **Strict.** An unknown section or key in the file, and a `FLEET_*` variable that is neither a
//! setting nor one of [`OTHER_VARIABLES`], is a start-up error naming the key and where it came
//! from (the file or the variable). A bad value names the key, the value and its source.
//! [`Settings::resolve`] also reports where every value came from, for `fleet config show`.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

mod load;

pub use load::*;

/// The defaults compiled into the binary, so `fleet` runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// A configuration error: the key at fault, what is wrong with its value (never a secret's
/// value), and the error underneath when there is one (a file that cannot be read).
#[derive(Debug, thiserror::Error)]
#[error("configuration: {message}")]
pub struct ConfigError {
    /// The setting or variable at fault, as an operator writes it (`database.url`,
    /// `schedules.scan.cron`, `FLEET_PII_KEYS`); `None` when the fault is not one key's (a
    /// file that cannot be read, several unknown keys).
    pub key: Option<String>,
    /// What is wrong, naming the key and the value.
    pub message: String,
    /// The error underneath, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConfigError {
    /// The value of `key` is wrong, as `message` says (naming the key itself).
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            message: message.into(),
            source: None,
        }
    }

    /// A fault that is not one key's.
    pub fn general(message: impl Into<String>) -> Self {
        Self {
            key: None,
            message: message.into(),
            source: None,
        }
    }

    /// This error, caused by `source`.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// `FLEET_*` variables that are not settings: each is read by the module it names.
pub const OTHER_VARIABLES: &[(&str, &str)] = &[
    (
        "FLEET_PII_KEYS",
        "the PII keyring, newest first (jobs::pii::Keyring)",
    ),
    (
        "FLEET_STRIPE_WEBHOOK_SECRET",
        "Stripe's webhook signing secrets, comma-separated (fleet serve)",
    ),
    (
        "FLEET_DUFFEL_WEBHOOK_SECRET",
        "Duffel's webhook signing secrets, comma-separated (fleet serve)",
    ),
    (
        "FLEET_PRODUCT_WEBHOOK_SECRET",
        "the product's signing secrets for data-rights requests, comma-separated (fleet serve; optional)",
    ),
];

/// All settings of a fleet process.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Connection pool.
    pub database: DatabaseSettings,
    /// More databases, each holding the jobs of the kinds it names (split by function:
    /// docs/scaling.md), keyed by name. The main database (`database`) keeps every other kind
    /// and every domain table.
    #[serde(default)]
    pub databases: BTreeMap<String, ExtraDatabase>,
    /// Worker runtime.
    pub worker: WorkerSettings,
    /// Per-kind overrides of the code defaults, keyed by kind name.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindOverride>,
    /// Rate budgets (`[budgets.<name>]`): overrides of the code defaults, or budgets of
    /// config's own (then both `rate` and `burst` are required). See docs/limits.md.
    #[serde(default)]
    pub budgets: BTreeMap<String, BudgetOverride>,
    /// Provider clients (base URLs, keys, timeouts). Keys come from the environment, e.g.
    /// `FLEET_PROVIDERS__STRIPE__SECRET_KEY`; an empty key leaves that provider unconfigured.
    #[serde(default)]
    pub providers: jobs::providers::ProvidersConfig,
    /// Cron schedules run by `fleet scheduler`, keyed by schedule name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleSettings>,
    /// The HTTP listeners of `fleet serve` (and the worker's admin endpoints).
    pub serve: ServeSettings,
    /// The operator console on the admin listener (`/ui/`).
    pub console: ConsoleSettings,
}

/// `[console]`: the operator console `fleet serve` serves on the admin listener under `/ui/`.
/// Every field is documented in config/default.toml.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsoleSettings {
    /// A session ends this long after its login, whatever happens in between.
    #[serde(deserialize_with = "duration")]
    pub session_ttl: Duration,
    /// A session also ends after this long without a request.
    #[serde(deserialize_with = "duration")]
    pub session_idle: Duration,
    /// Most live sessions per user: a new sign-in ends the oldest beyond it.
    pub max_sessions_per_user: u32,
    /// How often an open overview refreshes itself.
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
    /// A tracing UI's page for one trace, with `{trace_id}` where the id goes; empty: trace ids
    /// are shown, not linked.
    #[serde(default)]
    pub tracing_url: String,
    /// Failed sign-ins per user name from one client address within `login_window`; beyond,
    /// that name is refused from that address (429) until the window has passed. A name is
    /// refused from every address after four times as many, and an address after four times as
    /// many failures for names that are not users' (see `console::auth`).
    pub login_max_failures: u32,
    /// The window of `login_max_failures`.
    #[serde(deserialize_with = "duration")]
    pub login_window: Duration,
    /// The people who may sign in, keyed by user name (what the audit trail records).
    #[serde(default)]
    pub users: BTreeMap<String, ConsoleUser>,
}

/// One `[console.users.<name>]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsoleUser {
    /// `viewer` (reads) or `operator` (reads and acts).
    pub role: ConsoleRole,
    /// The password's Argon2 PHC string (`$argon2id$v=19$…`, from `fleet console
    /// hash-password`); never the password. Usually from the environment:
    /// `FLEET_CONSOLE__USERS__<NAME>__PASSWORD_HASH`.
    #[serde(default)]
    pub password_hash: Secret,
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleRole {
    /// Every page; no action.
    Viewer,
    /// Every page and every action (pause, resume, drain, replay, cancel, refund).
    Operator,
}

impl ConsoleRole {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

impl<'de> Deserialize<'de> for ConsoleRole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            other => Err(serde::de::Error::custom(format!(
                "{other:?} is not a console role (expected one of: viewer, operator)"
            ))),
        }
    }
}

/// `[serve]`: the two listeners and the limits that keep strangers from exhausting them.
/// Every field is documented in config/default.toml.
#[derive(Debug, Clone, Deserialize)]
pub struct ServeSettings {
    /// The public listener: `/webhooks/*` only.
    pub bind: std::net::SocketAddr,
    /// The admin listener: `/livez`, `/readyz`, `/metrics` (and the console).
    pub admin_bind: std::net::SocketAddr,
    /// Largest webhook body, bytes.
    pub max_body_bytes: usize,
    /// A connection has this long to send a request's headers (also between requests).
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// A request has this long to send its body.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// A request has this long in all, answer included.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Requests handled at once per listener; more are shed at once with 503 and Retry-After.
    pub max_in_flight: usize,
    /// Open connections per listener; more are closed as they arrive.
    pub max_connections: usize,
    /// On SIGTERM, in-flight requests have this long to finish.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// How often the metrics snapshot of the queue is refreshed.
    #[serde(deserialize_with = "duration")]
    pub metrics_refresh: Duration,
}

/// One `[schedules.<name>]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleSettings {
    /// Cron pattern with a seconds field: `sec min hour day-of-month month day-of-week`.
    pub cron: String,
    /// Job kind to enqueue.
    pub kind: String,
    /// Job args (a table).
    #[serde(default = "empty_args")]
    pub args: serde_json::Value,
    /// Off switch that keeps the entry in config.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn empty_args() -> serde_json::Value {
    serde_json::json!({})
}

fn yes() -> bool {
    true
}

/// A string that never prints (database URLs carry passwords).
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(serde::de::Error::custom(format!(
                "{other:?} is not a log format (expected one of: human, json)"
            ))),
        }
    }
}

/// Connection pool settings.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// The database of the fleet. `DATABASE_URL` wins. Required by every role that touches
    /// the fleet's data; only `demo`, `bench` and the tests find or start a server themselves.
    #[serde(default)]
    pub url: Option<Secret>,
    /// How long a first connection may take before the role gives up, naming host and port.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Pool size per process.
    pub max_connections: u32,
    /// What `url` reaches: `none` (Postgres itself), `session` (a pooler in session mode:
    /// each connection is a session, as with none) or `transaction` (a pooler in transaction
    /// mode, e.g. PgBouncer `pool_mode = transaction` or Supavisor's port 6543: no named
    /// prepared statements, every statement in a transaction, no session state; see
    /// docs/operations.md, "Managed Postgres").
    #[serde(default = "default_pooler")]
    pub pooler: jobs::Pooler,
    /// A direct connection (or a session-mode pooler) beside a transaction pooler `url`, for
    /// what needs a session: `LISTEN`, the workers' claim sessions, the booking saga's campaign
    /// lock, and `fleet migrate`. Without it, behind a transaction pooler, workers poll and
    /// claim in a transaction per round, and `fleet migrate` refuses. `DATABASE_DIRECT_URL`
    /// wins.
    #[serde(default)]
    pub direct_url: Option<Secret>,
    /// The schema that holds the fleet's tables (everything `fleet migrate` creates), beside
    /// the product's tables in `public`. `public` (the default) changes nothing. Any other:
    /// `fleet migrate` creates the schema if it may and migrates into it; sessions put it first
    /// on their `search_path`; behind a transaction pooler (no session to set), the role's own
    /// `search_path` must name it (`ALTER ROLE … SET search_path = fleet, public`), which every
    /// role checks at start. docs/operations.md, "Its own schema".
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The longest any statement the engine runs on its own (a claim, an outcome, a
    /// heartbeat, an operator read) may go unanswered before it fails and its connection is
    /// closed: a network that drops packets without a reset would otherwise hold a caller for
    /// as long as TCP retransmits. Statements inside a handler's transactions are bounded by
    /// the job's timeout instead.
    #[serde(deserialize_with = "duration")]
    pub statement_timeout: Duration,
    /// A hot standby of the database (Postgres streaming replication) for operator reads:
    /// `fleet queue stats/list/show`, the console's pages and the metrics snapshot read there
    /// when it is set; writes and the claim never do. `DATABASE_READ_URL` wins.
    #[serde(default)]
    pub read_url: Option<Secret>,
    // TLS for every URL of this section (`url`, `read_url`) that does not set its own
    // `sslmode`, `sslrootcert`, `sslcert` or `sslkey` query parameter; `[databases.*]` entries
    // inherit it field by field ([`DatabaseSettings::tls`]). (Not a flattened struct: serde's
    // flatten loses the key's path in error messages.)
    /// `disable`, `prefer` (libpq's default: TLS if the server offers it, certificate not
    /// checked), `require` (TLS, certificate not checked; checked against `sslrootcert` when
    /// one is given, as libpq does), `verify-ca` (TLS, certificate signed by a trusted CA) or
    /// `verify-full` (and issued for the host connected to).
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// A PEM file of the CA certificates to trust (beside the built-in public roots).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// A PEM client certificate (chain), for servers that authenticate clients by
    /// certificate. Needs `sslkey`.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// The PEM private key of `sslcert`.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
}

/// TLS to Postgres, as libpq names it (the `ssl*` keys of `[database]` and `[databases.*]`).
/// A URL's own query parameters (`?sslmode=verify-full&sslrootcert=...`) win over these for
/// that URL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsSettings {
    /// `disable`, `prefer` (libpq's default: TLS if the server offers it, certificate not
    /// checked), `require` (TLS, certificate not checked; checked against `sslrootcert` when
    /// one is given, as libpq does), `verify-ca` (TLS, certificate signed by a trusted CA) or
    /// `verify-full` (and issued for the host connected to).
    pub sslmode: Option<SslMode>,
    /// A PEM file of the CA certificates to trust (beside the built-in public roots).
    pub sslrootcert: Option<PathBuf>,
    /// A PEM client certificate (chain), for servers that authenticate clients by
    /// certificate. Needs `sslkey`.
    pub sslcert: Option<PathBuf>,
    /// The PEM private key of `sslcert`.
    pub sslkey: Option<PathBuf>,
}

impl TlsSettings {
    /// These settings with each unset field taken from `base`.
    pub fn or(&self, base: &TlsSettings) -> TlsSettings {
        TlsSettings {
            sslmode: self.sslmode.or(base.sslmode),
            sslrootcert: self
                .sslrootcert
                .clone()
                .or_else(|| base.sslrootcert.clone()),
            sslcert: self.sslcert.clone().or_else(|| base.sslcert.clone()),
            sslkey: self.sslkey.clone().or_else(|| base.sslkey.clone()),
        }
    }
}

fn default_schema() -> String {
    "public".to_owned()
}

/// Whether `name` can be a schema of the fleet's: an unquoted lower-case identifier, so it
/// never needs quoting in a `search_path`.
pub fn is_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
        && !name.starts_with("pg_")
}

fn default_pooler() -> jobs::Pooler {
    jobs::Pooler::None
}

/// libpq's `sslmode`, without `allow` (plain first, TLS only if refused: never what a managed
/// database wants, and not something the driver can do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked unless a CA file is given.
    Require,
    /// TLS with a certificate signed by a trusted CA, for any host name.
    VerifyCa,
    /// TLS with a certificate signed by a trusted CA and issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err(
                "sslmode \"allow\" is not supported (it tries plain TCP first): use prefer, \
                 require or a verify mode"
                    .to_owned(),
            ),
            other => Err(format!(
                "{other:?} is not an sslmode (expected one of: disable, prefer, require, \
                 verify-ca, verify-full)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for SslMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One `[databases.<name>]` entry: a database of its own for the jobs of `kinds`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExtraDatabase {
    /// The database (same form as `database.url`). Required.
    #[serde(default)]
    pub url: Option<Secret>,
    /// A hot standby of it for operator reads, like `database.read_url`.
    #[serde(default)]
    pub read_url: Option<Secret>,
    /// What its `url` reaches, like `database.pooler` (unset: `[database]`'s).
    #[serde(default)]
    pub pooler: Option<jobs::Pooler>,
    /// Its direct connection, like `database.direct_url`.
    #[serde(default)]
    pub direct_url: Option<Secret>,
    // TLS for its URLs; each unset field is `[database]`'s ([`ExtraDatabase::tls`]).
    /// Like `database.sslmode`, for this database's URLs.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// Like `database.sslrootcert`.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Like `database.sslcert`.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// Like `database.sslkey`.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// The kinds whose jobs live here (each kind lives in exactly one database).
    #[serde(default)]
    pub kinds: Vec<String>,
}

impl ExtraDatabase {
    /// Its TLS settings: its own, each unset field taken from `[database]` (`main`).
    pub fn tls(&self, main: &DatabaseSettings) -> TlsSettings {
        TlsSettings {
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            sslcert: self.sslcert.clone(),
            sslkey: self.sslkey.clone(),
        }
        .or(&main.tls())
    }
}

/// The name of the main database (`[database]`) where names are shown; `[databases.*]` may
/// not use it.
pub const MAIN_DATABASE: &str = "main";

impl DatabaseSettings {
    /// The TLS settings of this section.
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            sslcert: self.sslcert.clone(),
            sslkey: self.sslkey.clone(),
        }
    }

    /// The configured URL: `DATABASE_URL`, else `database.url`; `None` when neither is set.
    pub fn configured_url(&self) -> Option<String> {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.url.as_ref().map(|s| s.0.clone()))
            .filter(|u| !u.is_empty())
    }

    /// The configured direct connection: `DATABASE_DIRECT_URL`, else `database.direct_url`;
    /// `None` when neither is set.
    pub fn configured_direct_url(&self) -> Option<String> {
        std::env::var("DATABASE_DIRECT_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.direct_url.as_ref().map(|s| s.0.clone()))
            .filter(|u| !u.is_empty())
    }

    /// The configured read replica: `DATABASE_READ_URL`, else `database.read_url`; `None`
    /// when neither is set (reads go to the primary).
    pub fn configured_read_url(&self) -> Option<String> {
        std::env::var("DATABASE_READ_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.read_url.as_ref().map(|s| s.0.clone()))
            .filter(|u| !u.is_empty())
    }
}

/// Worker runtime settings. Every field is documented in config/default.toml.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Handlers running at once.
    pub concurrency: usize,
    /// Extra jobs claimed beyond free slots (kept alive by the heartbeat until they start).
    pub prefetch: usize,
    /// Queues served; empty = all.
    pub queues: Vec<String>,
    /// Fallback poll for new work when no notification arrives; also the longest time between
    /// promotions of scheduled and retryable jobs coming due (a promotion runs when the next
    /// one comes due, at most every 50 ms: `maintenance::promoter`).
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Lease length of a claim.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    /// How often held leases are renewed (well under `lease`).
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// How often expired leases are rescued.
    #[serde(deserialize_with = "duration")]
    pub rescue_interval: Duration,
    /// How long a draining worker lets in-flight handlers finish.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Most outcomes written per statement.
    pub completer_batch: usize,
    /// How long the completer waits for more outcomes before it writes a small batch
    /// (zero: it writes whatever has queued at once).
    #[serde(deserialize_with = "duration")]
    pub completer_linger: Duration,
    /// Completed jobs are deleted this long after they finished.
    #[serde(deserialize_with = "duration")]
    pub retention_completed: Duration,
    /// Cancelled jobs are deleted this long after they finished.
    #[serde(deserialize_with = "duration")]
    pub retention_cancelled: Duration,
    /// Dead jobs (the replayable record of failures) are deleted this long after they died.
    #[serde(deserialize_with = "duration")]
    pub retention_dead: Duration,
    /// How often each worker runs the cleaner.
    #[serde(deserialize_with = "duration")]
    pub clean_interval: Duration,
    /// A dead worker's registry row is deleted this long after its last heartbeat.
    #[serde(deserialize_with = "duration")]
    pub forget_after: Duration,
}

impl Default for WorkerSettings {
    /// The embedded defaults.
    fn default() -> Self {
        Settings::from_sources(None, &[])
            .expect("embedded config/default.toml is valid")
            .worker
    }
}

/// Per-kind overrides; unset fields keep the kind's code defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KindOverride {
    /// Queue.
    pub queue: Option<String>,
    /// Handlers of this kind per worker.
    pub concurrency: Option<usize>,
    /// Attempt budget.
    pub max_attempts: Option<i32>,
    /// Backoff base.
    #[serde(default, deserialize_with = "opt_duration")]
    pub backoff_base: Option<Duration>,
    /// Backoff cap.
    #[serde(default, deserialize_with = "opt_duration")]
    pub backoff_cap: Option<Duration>,
    /// Handler timeout.
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Key window after completion.
    #[serde(default, deserialize_with = "opt_duration")]
    pub idempotency_window: Option<Duration>,
    /// Priority (lower first).
    pub priority: Option<i16>,
    /// Most jobs of this kind running at once across the whole fleet.
    pub global_concurrency: Option<usize>,
    /// Most jobs of this kind running at once per `limit_key` value, fleet-wide.
    pub key_concurrency: Option<usize>,
    /// The args field whose value keys `key_concurrency` and fairness.
    pub limit_key: Option<String>,
    /// The rate budgets an attempt of this kind spends (replaces the code's list).
    pub budgets: Option<Vec<String>>,
    /// `true` declares a kind no code of this binary registers, whose jobs run on apalis
    /// workers (`fleet::apalis`): `fleet enqueue`, the operator commands and the console treat
    /// it like any kind, and `fleet worker` never claims it (see `Registry::declare_external`).
    #[serde(default)]
    pub external: bool,
}

/// One `[budgets.<name>]` entry; unset fields keep the code default.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BudgetOverride {
    /// Sustained rate, e.g. `"10/s"`, `"600/m"`, `"2.5/s"`, `"1000/h"`.
    #[serde(default, deserialize_with = "opt_rate")]
    pub rate: Option<Rate>,
    /// Most tokens the bucket holds: the largest burst after a quiet spell (>= 1).
    pub burst: Option<u32>,
}

/// A rate: events per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Events per second (> 0).
    pub per_second: f64,
}

impl std::str::FromStr for Rate {
    type Err = String;
    /// `<count>/<unit>`: a positive number, then `s`, `m` or `h` (also `sec`, `min`, `hour`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a rate like \"10/s\", \"600/m\" or \"1000/h\" (a positive count, \
                 `/`, then s, m or h)"
            )
        };
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad()),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(bad());
        }
        Ok(Rate {
            per_second: n / secs,
        })
    }
}

fn opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse::<Rate>().map_err(serde::de::Error::custom))
        .transpose()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like \"500ms\", \"15s\" or \"5m\" ({e})"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// The longest delay `fleet enqueue` accepts before a job may run: a campaign lives up to
/// twelve months (docs/domain.md), so nothing the fleet runs waits longer.
pub const MAX_ENQUEUE_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest an operator's drain may wait (CLI and console) before it gives up and leaves
/// the kinds paused: a deploy waits minutes, never days.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// An operator's duration (`30s`, `15m`, `2h`, `7d`), refused with the reason when it is
/// negative, not a duration, or longer than `max` (said in the same units).
pub fn parse_duration_within(text: &str, max: Duration) -> Result<Duration, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{t:?} is negative: a duration counts forward from now"
        ));
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("{t:?} is not a duration like \"30s\", \"15m\", \"2h\" or \"7d\" ({e})")
    })?;
    if d > max {
        return Err(format!(
            "{t:?} is longer than the longest allowed, {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}
