//! Settings: the embedded `config/default.toml`, then an optional file (`--config`), then
//! `FLEET_*` environment variables (`FLEET_WORKER__CONCURRENCY=32`, `__` between levels).
//!
//! A bad value or an unknown key inside a section is a start-up error that names the key and
//! the value. Top-level `FLEET_*` variables that are not settings (e.g. `FLEET_PII_KEYS`) are
//! read by their own modules and ignored here.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use serde::{Deserialize, Deserializer};

/// The defaults compiled into the binary, so `fleet` runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A configuration error, naming the key and value at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// All settings of a fleet process.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Database URL; `DATABASE_URL` wins; unset: local server, else a throwaway cluster.
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Connection pool.
    pub database: DatabaseSettings,
    /// Worker runtime.
    pub worker: WorkerSettings,
    /// Per-kind overrides of the code defaults, keyed by kind name.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindOverride>,
    /// Provider clients (base URLs, keys, timeouts). Keys come from the environment, e.g.
    /// `FLEET_PROVIDERS__STRIPE__SECRET_KEY`; an empty key leaves that provider unconfigured.
    #[serde(default)]
    pub providers: jobs::providers::ProvidersConfig,
    /// Cron schedules run by `fleet scheduler`, keyed by schedule name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleSettings>,
}

/// One `[schedules.<name>]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Connection pool settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Pool size per process.
    pub max_connections: u32,
}

/// Worker runtime settings. Every field is documented in config/default.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Handlers running at once.
    pub concurrency: usize,
    /// Extra jobs claimed beyond free slots (kept alive by the heartbeat until they start).
    pub prefetch: usize,
    /// Queues served; empty = all.
    pub queues: Vec<String>,
    /// Fallback poll for new work when no notification arrives; also the cadence at which
    /// scheduled and retryable jobs coming due are promoted.
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
#[serde(deny_unknown_fields)]
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

impl Settings {
    /// Loads the layered settings from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("FLEET_"))
            .collect();
        Self::from_sources(file, &env)
    }

    /// Loads from the embedded defaults, `file`, then the given `FLEET_*` pairs.
    pub fn from_sources(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        let env_map: config::Map<String, String> = env.iter().cloned().collect();
        b = b.add_source(
            config::Environment::with_prefix("FLEET")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("worker.queues")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        let raw = b.build().map_err(|e| ConfigError(e.to_string()))?;
        let settings: Settings = raw
            .clone()
            .try_deserialize()
            .map_err(|e| ConfigError(with_value(&e.to_string(), &raw, env)))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        let bad = |key: &str, val: String, why: &str| {
            Err(ConfigError(format!("{key} = {val} is invalid: {why}")))
        };
        if w.concurrency == 0 || w.concurrency > 10_000 {
            return bad(
                "worker.concurrency",
                w.concurrency.to_string(),
                "must be 1..=10000",
            );
        }
        if w.poll_interval.is_zero() || w.poll_interval > Duration::from_secs(1) {
            return bad(
                "worker.poll_interval",
                format!("{:?}", w.poll_interval),
                "must be > 0 and <= 1s (scheduled jobs come due within one poll)",
            );
        }
        if w.heartbeat_interval.is_zero() || w.heartbeat_interval * 2 > w.lease {
            return bad(
                "worker.heartbeat_interval",
                format!("{:?}", w.heartbeat_interval),
                "must be > 0 and at most half of worker.lease",
            );
        }
        if w.rescue_interval.is_zero() {
            return bad("worker.rescue_interval", "0".into(), "must be > 0");
        }
        for (key, d) in [
            ("worker.retention_completed", w.retention_completed),
            ("worker.retention_cancelled", w.retention_cancelled),
            ("worker.retention_dead", w.retention_dead),
        ] {
            if d < Duration::from_secs(60) {
                return bad(key, format!("{d:?}"), "must be at least 1m");
            }
        }
        if w.completer_batch == 0 {
            return bad("worker.completer_batch", "0".into(), "must be >= 1");
        }
        if self.database.max_connections < 4 {
            return bad(
                "database.max_connections",
                self.database.max_connections.to_string(),
                "must be >= 4 (fetch, completer, heartbeat and maintenance each use one)",
            );
        }
        for (kind, o) in &self.kinds {
            if o.concurrency == Some(0) {
                return bad(
                    &format!("kinds.{kind}.concurrency"),
                    "0".into(),
                    "must be >= 1",
                );
            }
            if matches!(o.max_attempts, Some(n) if n < 1) {
                return bad(
                    &format!("kinds.{kind}.max_attempts"),
                    format!("{:?}", o.max_attempts.unwrap_or_default()),
                    "must be >= 1",
                );
            }
            if matches!(o.timeout, Some(t) if t.is_zero()) {
                return bad(&format!("kinds.{kind}.timeout"), "0s".into(), "must be > 0");
            }
        }
        Ok(())
    }
}

/// Appends the offending value to a deserialization error that names a key.
fn with_value(msg: &str, raw: &config::Config, env: &[(String, String)]) -> String {
    let key = msg
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned);
    let Some(key) = key else {
        return msg.to_owned();
    };
    let env_name = format!("FLEET_{}", key.to_uppercase().replace('.', "__"));
    let from_env = env
        .iter()
        .find(|(k, _)| *k == env_name)
        .map(|(_, v)| v.clone());
    let value = from_env
        .clone()
        .or_else(|| raw.get_string(&key).ok())
        .unwrap_or_else(|| "?".into());
    let source = if from_env.is_some() {
        format!(" (from {env_name})")
    } else {
        String::new()
    };
    format!("{key} = {value:?}{source} is invalid: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults_load() {
        let s = Settings::from_sources(None, &[]).unwrap();
        assert!(s.worker.concurrency >= 1);
        assert!(s.worker.poll_interval <= Duration::from_secs(1));
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::from_sources(
            None,
            &env(&[
                ("FLEET_WORKER__CONCURRENCY", "7"),
                ("FLEET_WORKER__LEASE", "20s"),
                ("FLEET_WORKER__QUEUES", "a,b"),
                ("FLEET_KINDS__BOOKING_ATTEMPT__MAX_ATTEMPTS", "3"),
                ("FLEET_PII_KEYS", "not-a-setting-and-ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(s.worker.lease, Duration::from_secs(20));
        assert_eq!(s.worker.queues, vec!["a", "b"]);
        assert_eq!(s.kinds["booking_attempt"].max_attempts, Some(3));
    }

    #[test]
    fn bad_value_error_names_key_and_value() {
        let e = Settings::from_sources(None, &env(&[("FLEET_WORKER__CONCURRENCY", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.concurrency"), "{e}");
        assert!(e.contains("lots"), "{e}");
        assert!(e.contains("FLEET_WORKER__CONCURRENCY"), "{e}");
    }

    #[test]
    fn bad_duration_error_names_key_and_value() {
        let e = Settings::from_sources(None, &env(&[("FLEET_WORKER__LEASE", "forever")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.lease"), "{e}");
        assert!(e.contains("forever"), "{e}");
    }

    #[test]
    fn unknown_key_in_a_section_is_an_error_naming_it() {
        let e = Settings::from_sources(None, &env(&[("FLEET_WORKER__CONCURENCY", "3")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurency"), "{e}");
    }

    #[test]
    fn semantic_validation_names_key_and_value() {
        let e = Settings::from_sources(
            None,
            &env(&[
                ("FLEET_WORKER__LEASE", "2s"),
                ("FLEET_WORKER__HEARTBEAT_INTERVAL", "5s"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("worker.heartbeat_interval") && e.contains("5s"),
            "{e}"
        );
    }

    #[test]
    fn missing_config_file_is_named() {
        let e = Settings::from_sources(Some(Path::new("/nonexistent/fleet.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/fleet.toml"), "{e}");
    }

    #[test]
    fn database_url_never_prints() {
        let s = Settings::from_sources(
            None,
            &env(&[("FLEET_DATABASE_URL", "postgres://u:hunter2@h/db")]),
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
