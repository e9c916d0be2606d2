//! Loading the settings: the embedded defaults, the `--config` file and the `FLEET_*`
//! variables layered in that order, strictly (an unknown key or variable is an error naming
//! where it came from); every value validated; and where each came from
//! ([`Settings::resolve`], for `fleet config show`).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;

/// Checks that `url` (the value of `key`) is a postgres URL; the error names the key and
/// the parser's reason, never the value (it may carry a password).
fn check_database_url(key: &str, url: &str) -> Result<(), ConfigError> {
    use std::str::FromStr;
    let reason = if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        Some("it does not start with postgres:// or postgresql://".to_owned())
    } else {
        sqlx::postgres::PgConnectOptions::from_str(url)
            .err()
            .map(|e| e.to_string())
    };
    match reason {
        None => Ok(()),
        Some(why) => Err(ConfigError::new(
            key,
            format!("{key} is not a valid database URL like postgres://user@host:5432/db: {why}"),
        )),
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingSource {
    /// The embedded `config/default.toml`.
    Default,
    /// The `--config` file.
    File(PathBuf),
    /// A `FLEET_*` variable.
    Env(String),
}

impl fmt::Display for SettingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Env(v) => f.write_str(v),
        }
    }
}

/// One resolved setting, for `fleet config show`.
#[derive(Debug, Clone)]
pub struct ResolvedSetting {
    /// The key, e.g. `worker.concurrency` or `kinds."fleet.sleep".timeout`.
    pub key: String,
    /// The value as configured; `***` for secrets.
    pub value: String,
    /// Where it came from.
    pub source: SettingSource,
}

/// The settings and where each value came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The settings.
    pub settings: Settings,
    /// Every configured leaf value, sorted by key.
    pub values: Vec<ResolvedSetting>,
}

/// A key path: its segments (a kind name may contain dots).
type KeyPath = Vec<String>;

fn display_path(path: &[String]) -> String {
    path.iter()
        .map(|seg| {
            if seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                seg.clone()
            } else {
                format!("{seg:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Keys whose values are secrets (never printed).
fn is_secret_key(path: &[String]) -> bool {
    path.last().is_some_and(|k| {
        matches!(
            k.as_str(),
            "secret_key"
                | "secret_access_key"
                | "access_token"
                | "api_key"
                | "auth_token"
                | "url"
                | "read_url"
                | "direct_url"
                | "password_hash"
        ) && path.first().map(String::as_str) != Some("schedules")
    })
}

/// The `FLEET_*` variables turned into a table, with the variable behind each leaf.
struct EnvLayer {
    table: config::Map<String, config::Value>,
    origins: BTreeMap<KeyPath, String>,
}

impl EnvLayer {
    fn from_vars(env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut layer = EnvLayer {
            table: config::Map::new(),
            origins: BTreeMap::new(),
        };
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("FLEET_") else {
                continue;
            };
            if OTHER_VARIABLES.iter().any(|(v, _)| v == var) {
                continue;
            }
            let path: KeyPath = rest
                .split("__")
                .map(|seg| seg.to_ascii_lowercase().replace("_dot_", "."))
                .collect();
            if path.iter().any(|seg| seg.is_empty()) {
                return Err(ConfigError::new(
                    var.as_str(),
                    format!(
                        "{var}: an empty key segment (levels are joined by `__`, e.g. \
                         FLEET_WORKER__CONCURRENCY)"
                    ),
                ));
            }
            let is_list = path == ["worker", "queues"]
                || (path.len() == 3 && path[0] == "databases" && path[2] == "kinds")
                || (path.len() == 3 && path[0] == "kinds" && path[2] == "budgets");
            let leaf = if is_list {
                config::ValueKind::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|q| !q.is_empty())
                        .map(|q| config::Value::new(Some(var), q))
                        .collect(),
                )
            } else {
                config::ValueKind::String(value.clone())
            };
            insert_path(
                &mut layer.table,
                &path,
                config::Value::new(Some(var), leaf),
                var,
            )?;
            layer.origins.insert(path, var.clone());
        }
        Ok(layer)
    }
}

fn insert_path(
    table: &mut config::Map<String, config::Value>,
    path: &[String],
    leaf: config::Value,
    var: &str,
) -> Result<(), ConfigError> {
    let (first, rest) = path.split_first().expect("non-empty path");
    if rest.is_empty() {
        table.insert(first.clone(), leaf);
        return Ok(());
    }
    let entry = table.entry(first.clone()).or_insert_with(|| {
        config::Value::new(
            Some(&var.to_owned()),
            config::ValueKind::Table(Default::default()),
        )
    });
    match &mut entry.kind {
        config::ValueKind::Table(t) => insert_path(t, rest, leaf, var),
        _ => Err(ConfigError::new(
            var,
            format!(
                "{var}: `{}` is a value, not a section, so it has no `{}`",
                first, rest[0]
            ),
        )),
    }
}

impl config::Source for EnvLayer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(EnvLayer {
            table: self.table.clone(),
            origins: self.origins.clone(),
        })
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.table.clone())
    }
}

impl fmt::Debug for EnvLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvLayer({} variable(s))", self.origins.len())
    }
}

/// The leaf paths a TOML table defines.
fn toml_leaves(table: &toml::Table, prefix: &mut KeyPath, out: &mut Vec<KeyPath>) {
    for (k, v) in table {
        prefix.push(k.clone());
        match v {
            toml::Value::Table(t) => toml_leaves(t, prefix, out),
            _ => out.push(prefix.clone()),
        }
        prefix.pop();
    }
}

/// The leaves of the merged configuration, with their values as text.
fn config_leaves(v: &config::Value, prefix: &mut KeyPath, out: &mut Vec<(KeyPath, String)>) {
    match &v.kind {
        config::ValueKind::Table(t) => {
            for (k, v) in t {
                prefix.push(k.clone());
                config_leaves(v, prefix, out);
                prefix.pop();
            }
        }
        config::ValueKind::Array(items) => {
            let texts: Vec<String> = items.iter().map(|i| i.to_string()).collect();
            out.push((prefix.clone(), format!("[{}]", texts.join(", "))));
        }
        config::ValueKind::String(s) => out.push((prefix.clone(), format!("{s:?}"))),
        _ => out.push((prefix.clone(), v.to_string())),
    }
}

/// The segments of a path serde_ignored reports.
fn ignored_segments(p: &serde_ignored::Path<'_>, out: &mut KeyPath) {
    use serde_ignored::Path as P;
    match p {
        P::Root => {}
        P::Seq { parent, index } => {
            ignored_segments(parent, out);
            out.push(index.to_string());
        }
        P::Map { parent, key } => {
            ignored_segments(parent, out);
            out.push(key.clone());
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_segments(parent, out)
        }
    }
}

impl Settings {
    /// Loads the layered settings from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Ok(Self::resolve(file, &fleet_env())?.settings)
    }

    /// Loads from the embedded defaults, `file`, then the given `FLEET_*` pairs.
    pub fn from_sources(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        Ok(Self::resolve(file, env)?.settings)
    }

    /// Loads like [`Settings::from_sources`] and reports where each value came from.
    pub fn resolve(file: Option<&Path>, env: &[(String, String)]) -> Result<Resolved, ConfigError> {
        let mut b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        let mut file_leaves = Vec::new();
        if let Some(f) = file {
            let text = std::fs::read_to_string(f).map_err(|e| {
                ConfigError::general(format!("config file {} cannot be read", f.display()))
                    .caused_by(e)
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                ConfigError::general(format!("config file {} is not valid TOML", f.display()))
                    .caused_by(e)
            })?;
            toml_leaves(&table, &mut Vec::new(), &mut file_leaves);
            b = b.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let env_layer = EnvLayer::from_vars(env)?;
        let env_origins = env_layer.origins.clone();
        b = b.add_source(env_layer);
        let source_of = |path: &[String]| -> SettingSource {
            if let Some((_, var)) = env_origins
                .iter()
                .find(|(p, _)| p.as_slice() == path || p.starts_with(path) || path.starts_with(p))
            {
                return SettingSource::Env(var.clone());
            }
            match file {
                Some(f)
                    if file_leaves
                        .iter()
                        .any(|p| p.starts_with(path) || path.starts_with(p)) =>
                {
                    SettingSource::File(f.to_owned())
                }
                _ => SettingSource::Default,
            }
        };
        let raw = b.build().map_err(|e| ConfigError::general(e.to_string()))?;
        let mut unknown: Vec<KeyPath> = Vec::new();
        let settings: Result<Settings, _> = serde_ignored::deserialize(raw.clone(), |p| {
            let mut segs = Vec::new();
            ignored_segments(&p, &mut segs);
            unknown.push(segs);
        });
        if !unknown.is_empty() {
            // Every misspelling at once, each with where it came from: fixing them one start
            // at a time is how a 3 a.m. config change takes an hour.
            let named: Vec<String> = unknown
                .iter()
                .map(|path| {
                    let where_ = match source_of(path) {
                        SettingSource::Env(var) => format!("from {var}"),
                        SettingSource::File(f) => format!("in {}", f.display()),
                        SettingSource::Default => "in the embedded defaults".to_owned(),
                    };
                    let hint = if path == &["database_url"] {
                        " (the database is `database.url`, or DATABASE_URL)"
                    } else {
                        ""
                    };
                    format!("`{}` ({where_}){hint}", display_path(path))
                })
                .collect();
            let what = if named.len() == 1 {
                "unknown setting"
            } else {
                "unknown settings"
            };
            let message = format!(
                "{what} {}; see config/default.toml for every key",
                named.join(", ")
            );
            return Err(match unknown.as_slice() {
                [one] => ConfigError::new(display_path(one), message),
                _ => ConfigError::general(message),
            });
        }
        let settings = settings.map_err(|e| {
            ConfigError::general(with_value(&e.to_string(), &raw, &env_origins, env))
        })?;
        settings.validate()?;
        let mut leaves = Vec::new();
        config_leaves(&raw.cache, &mut Vec::new(), &mut leaves);
        leaves.sort();
        let values = leaves
            .into_iter()
            .map(|(path, value)| ResolvedSetting {
                key: display_path(&path),
                value: if is_secret_key(&path) && value != "\"\"" {
                    "***".to_owned()
                } else {
                    value
                },
                source: source_of(&path),
            })
            .collect();
        Ok(Resolved { settings, values })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        let bad = |key: &str, val: String, why: &str| {
            Err(ConfigError::new(
                key,
                format!("{key} = {val} is invalid: {why}"),
            ))
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
        if w.completer_linger > Duration::from_millis(50) {
            return bad(
                "worker.completer_linger",
                format!("{:?}", w.completer_linger),
                "must be at most 50ms (each finished job's slot is held that long)",
            );
        }
        let sv = &self.serve;
        if sv.max_body_bytes == 0 || sv.max_body_bytes > 16 << 20 {
            return bad(
                "serve.max_body_bytes",
                sv.max_body_bytes.to_string(),
                "must be 1..=16 MiB",
            );
        }
        if sv.max_in_flight == 0 || sv.max_connections < sv.max_in_flight {
            return bad(
                "serve.max_connections",
                sv.max_connections.to_string(),
                "must be >= serve.max_in_flight (>= 1)",
            );
        }
        for (key, d) in [
            ("serve.header_timeout", sv.header_timeout),
            ("serve.body_timeout", sv.body_timeout),
            ("serve.request_timeout", sv.request_timeout),
            ("serve.metrics_refresh", sv.metrics_refresh),
        ] {
            if d.is_zero() {
                return bad(key, "0s".into(), "must be > 0");
            }
        }
        self.console.validate()?;
        if self.database.connect_timeout.is_zero() {
            return bad("database.connect_timeout", "0s".into(), "must be > 0");
        }
        if let Some(u) = self.database.read_url.as_ref().filter(|u| !u.0.is_empty()) {
            check_database_url("database.read_url", u.expose())?;
        }
        if let Some(u) = self
            .database
            .direct_url
            .as_ref()
            .filter(|u| !u.0.is_empty())
        {
            check_database_url("database.direct_url", u.expose())?;
        }
        if !is_schema_name(&self.database.schema) {
            return bad(
                "database.schema",
                format!("{:?}", self.database.schema),
                "must be a lower-case identifier (a-z, 0-9, `_`; not starting with a digit or \
                 pg_), at most 63 bytes",
            );
        }
        if self.database.statement_timeout < Duration::from_secs(1) {
            return bad(
                "database.statement_timeout",
                format!("{:?}", self.database.statement_timeout),
                "must be at least 1s (it bounds every engine statement, bulk ones included)",
            );
        }
        let mut homes: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, d) in &self.databases {
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid_name || name == MAIN_DATABASE {
                return Err(ConfigError::new(
                    format!("databases.{name}"),
                    format!(
                        "databases.{name}: {name:?} is not a database name (1..=32 of a-z, 0-9, \
                         `_`; `{MAIN_DATABASE}` is the [database] section)"
                    ),
                ));
            }
            match d.url.as_ref().filter(|u| !u.0.is_empty()) {
                None => {
                    return Err(ConfigError::new(
                        format!("databases.{name}.url"),
                        format!(
                            "databases.{name}.url is not set: every [databases.*] entry needs its \
                             database, e.g. from FLEET_DATABASES__{}__URL",
                            name.to_ascii_uppercase()
                        ),
                    ))
                }
                Some(u) => check_database_url(&format!("databases.{name}.url"), u.expose())?,
            }
            if let Some(u) = d.read_url.as_ref().filter(|u| !u.0.is_empty()) {
                check_database_url(&format!("databases.{name}.read_url"), u.expose())?;
            }
            if let Some(u) = d.direct_url.as_ref().filter(|u| !u.0.is_empty()) {
                check_database_url(&format!("databases.{name}.direct_url"), u.expose())?;
            }
            if d.kinds.is_empty() {
                return Err(ConfigError::new(
                    format!("databases.{name}.kinds"),
                    format!(
                        "databases.{name}.kinds is empty: name the kinds whose jobs live there"
                    ),
                ));
            }
            for k in &d.kinds {
                if let Some(other) = homes.insert(k, name) {
                    return Err(ConfigError::new(
                        format!("databases.{name}.kinds"),
                        format!(
                            "kind {k:?} is in databases.{other}.kinds and databases.{name}.kinds: \
                             a kind's jobs live in one database"
                        ),
                    ));
                }
            }
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
            for (key, v) in [
                ("global_concurrency", o.global_concurrency),
                ("key_concurrency", o.key_concurrency),
            ] {
                if v == Some(0) {
                    return bad(
                        &format!("kinds.{kind}.{key}"),
                        "0".into(),
                        "must be >= 1 (pause a kind with `fleet queue pause`)",
                    );
                }
            }
            if matches!(&o.limit_key, Some(k) if k.is_empty()) {
                return bad(
                    &format!("kinds.{kind}.limit_key"),
                    "\"\"".into(),
                    "must name an args field",
                );
            }
        }
        for (name, b) in &self.budgets {
            if b.burst == Some(0) {
                return bad(&format!("budgets.{name}.burst"), "0".into(), "must be >= 1");
            }
        }
        Ok(())
    }
}

impl ConsoleSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, val: String, why: &str| {
            Err(ConfigError::new(
                key,
                format!("{key} = {val} is invalid: {why}"),
            ))
        };
        if self.session_ttl < Duration::from_secs(60)
            || self.session_ttl > Duration::from_secs(7 * 86_400)
        {
            return bad(
                "console.session_ttl",
                format!("{:?}", self.session_ttl),
                "must be 1m..=7d",
            );
        }
        if self.session_idle < Duration::from_secs(60) || self.session_idle > self.session_ttl {
            return bad(
                "console.session_idle",
                format!("{:?}", self.session_idle),
                "must be 1m..=console.session_ttl",
            );
        }
        if self.max_sessions_per_user == 0 {
            return bad("console.max_sessions_per_user", "0".into(), "must be >= 1");
        }
        if self.refresh < Duration::from_millis(500) || self.refresh > Duration::from_secs(60) {
            return bad(
                "console.refresh",
                format!("{:?}", self.refresh),
                "must be 500ms..=60s",
            );
        }
        if self.login_max_failures == 0 {
            return bad("console.login_max_failures", "0".into(), "must be >= 1");
        }
        if self.login_window.is_zero() {
            return bad("console.login_window", "0s".into(), "must be > 0");
        }
        let t = &self.tracing_url;
        if !t.is_empty()
            && (!(t.starts_with("https://") || t.starts_with("http://"))
                || !t.contains("{trace_id}"))
        {
            return bad(
                "console.tracing_url",
                format!("{t:?}"),
                "must be an http(s) URL with {trace_id} where the trace id goes, or empty",
            );
        }
        for (name, u) in &self.users {
            let valid_name = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
            if !valid_name {
                return Err(ConfigError::new(
                    format!("console.users.{name}"),
                    format!(
                        "console.users: {name:?} is not a user name (1..=64 of a-z, 0-9, `_`, \
                         `.`, `-`, starting with a letter or digit)"
                    ),
                ));
            }
            let key = format!("console.users.{name}.password_hash");
            let hash = u.password_hash.expose();
            if hash.is_empty() {
                return Err(ConfigError::new(
                    key.as_str(),
                    format!(
                        "{key} is not set: give the user an Argon2 hash (`fleet console \
                         hash-password`), e.g. from FLEET_CONSOLE__USERS__{}__PASSWORD_HASH",
                        name.to_ascii_uppercase().replace('.', "_DOT_")
                    ),
                ));
            }
            match argon2::password_hash::phc::PasswordHash::new(hash) {
                Ok(h) if h.algorithm.as_str().starts_with("argon2") => {}
                Ok(h) => {
                    return Err(ConfigError::new(
                        key.as_str(),
                        format!(
                            "{key} is invalid: a {} hash, expected Argon2 (`$argon2id$…`)",
                            h.algorithm.as_str()
                        ),
                    ))
                }
                // The hash itself is a secret: name the fault, not the value.
                Err(e) => {
                    return Err(ConfigError::new(
                        key.as_str(),
                        format!(
                            "{key} is invalid: not an Argon2 PHC string like `$argon2id$v=19$m=…` \
                             ({e})"
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Appends the offending value and its source to a deserialization error that names a key.
fn with_value(
    msg: &str,
    raw: &config::Config,
    env_origins: &BTreeMap<KeyPath, String>,
    env: &[(String, String)],
) -> String {
    let key = msg
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned);
    let Some(key) = key else {
        return msg.to_owned();
    };
    let var = env_origins
        .iter()
        .find(|(p, _)| p.join(".") == key)
        .map(|(_, v)| v.clone());
    let from_env = var
        .as_ref()
        .and_then(|var| env.iter().find(|(k, _)| k == var))
        .map(|(_, v)| v.clone());
    let value = from_env
        .clone()
        .or_else(|| raw.get_string(&key).ok())
        .unwrap_or_else(|| "?".into());
    let source = match var {
        Some(var) => format!(" (from {var})"),
        None => String::new(),
    };
    // The crate's message ends with its own "for key `…`": the key is already named first.
    let reason = msg.split(" for key `").next().unwrap_or(msg);
    format!("{key} = {value:?}{source} is invalid: {reason}")
}

/// The process's `FLEET_*` variables.
pub fn fleet_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("FLEET_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completer_linger_past_50ms_is_refused_naming_the_key_and_a_shorter_one_is_taken() {
        let e = Settings::from_sources(None, &env(&[("FLEET_WORKER__COMPLETER_LINGER", "51ms")]))
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("worker.completer_linger"));
        assert!(e.to_string().contains("at most 50ms"), "{e}");
        let ok = Settings::from_sources(None, &env(&[("FLEET_WORKER__COMPLETER_LINGER", "2ms")]))
            .unwrap();
        assert_eq!(ok.worker.completer_linger, Duration::from_millis(2));
        let e = Settings::from_sources(None, &env(&[("FLEET_WORKER__COMPLETER_LINGER", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("worker.completer_linger") && e.contains("soon"),
            "names the key and the value: {e}"
        );
    }

    #[test]
    fn a_config_error_carries_its_key_and_the_error_underneath() {
        let e =
            Settings::from_sources(None, &env(&[("FLEET_WORKER__CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("worker.concurrency"));
        assert!(e.source.is_none());
        let missing = Path::new("/nonexistent/fleet.toml");
        let e = Settings::from_sources(Some(missing), &[]).unwrap_err();
        assert_eq!(e.key, None, "a file is not one key");
        let io = std::error::Error::source(&e).expect("the I/O error underneath");
        assert!(io.to_string().contains("No such file"), "{io}");
        assert!(
            e.to_string().contains("/nonexistent/fleet.toml")
                && !e.to_string().contains("No such file"),
            "the message names the file; the cause is its source: {e}"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rates_read_as_count_per_unit() {
        for (text, per_second) in [
            ("10/s", 10.0),
            ("600/m", 10.0),
            ("2.5/s", 2.5),
            ("3600/h", 1.0),
            (" 5 / min ", 5.0 / 60.0),
        ] {
            assert_eq!(
                text.parse::<Rate>().unwrap().per_second,
                per_second,
                "{text}"
            );
        }
        for bad in [
            "",
            "10",
            "10/d",
            "-1/s",
            "0/s",
            "x/s",
            "10 per second",
            "inf/s",
        ] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("\"10/s\""), "{bad}: {e}");
        }
    }

    #[test]
    fn budgets_and_kind_limits_come_from_the_environment() {
        let s = Settings::from_sources(
            None,
            &env(&[
                ("FLEET_BUDGETS__DUFFEL_SEARCH__RATE", "600/m"),
                ("FLEET_BUDGETS__DUFFEL_SEARCH__BURST", "30"),
                ("FLEET_KINDS__CAMPAIGN_SEARCH__GLOBAL_CONCURRENCY", "7"),
                (
                    "FLEET_KINDS__CAMPAIGN_SEARCH__BUDGETS",
                    "duffel_search, stripe",
                ),
            ]),
        )
        .unwrap();
        let b = &s.budgets["duffel_search"];
        assert_eq!(b.rate.unwrap().per_second, 10.0);
        assert_eq!(b.burst, Some(30));
        let k = &s.kinds["campaign_search"];
        assert_eq!(k.global_concurrency, Some(7));
        assert_eq!(
            k.budgets.as_deref(),
            Some(&["duffel_search".to_owned(), "stripe".to_owned()][..])
        );
        let e = Settings::from_sources(
            None,
            &env(&[("FLEET_KINDS__BOOKING_ATTEMPT__KEY_CONCURRENCY", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kinds.booking_attempt.key_concurrency"), "{e}");
        let e = Settings::from_sources(None, &env(&[("FLEET_BUDGETS__STRIPE__BURST", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("budgets.stripe.burst"), "{e}");
    }

    #[test]
    fn tls_settings_come_from_file_and_environment_and_databases_inherit_them() {
        let f = file_with(
            "[database]\nsslmode = \"verify-full\"\nsslrootcert = \"/etc/fleet/ca.pem\"\n\n\
             [databases.search]\nurl = \"postgres://h/s\"\nkinds = [\"campaign_search\"]\n\
             sslmode = \"require\"\n",
        );
        let s = Settings::from_sources(
            Some(&f),
            &env(&[("FLEET_DATABASE__SSLCERT", "/etc/fleet/client.pem")]),
        )
        .unwrap();
        assert_eq!(s.database.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(
            s.database.sslcert.as_deref(),
            Some(Path::new("/etc/fleet/client.pem"))
        );
        let search = s.databases["search"].tls(&s.database);
        assert_eq!(search.sslmode, Some(SslMode::Require), "its own mode wins");
        assert_eq!(
            search.sslrootcert.as_deref(),
            Some(Path::new("/etc/fleet/ca.pem")),
            "the CA is inherited"
        );
    }

    #[test]
    fn a_bad_or_misspelt_tls_setting_is_an_error_naming_it() {
        let e = Settings::from_sources(None, &env(&[("FLEET_DATABASE__SSLMODE", "verify")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("database.sslmode") && e.contains("verify-full"),
            "names the key and the valid modes: {e}"
        );
        let e = Settings::from_sources(None, &env(&[("FLEET_DATABASE__SSLMODE", "allow")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
        let f = file_with("[database]\nsslrootcrt = \"/ca.pem\"\n");
        let e = Settings::from_sources(Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`database.sslrootcrt`"), "{e}");
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
            &env(&[("FLEET_DATABASE__URL", "postgres://u:hunter2@h/db")]),
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    fn file_with(text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "fleet-config-test-{}-{}.toml",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn an_unknown_section_in_the_file_is_an_error_naming_it_and_the_file() {
        let f = file_with("[wroker]\nconcurrency = 1\n");
        let e = Settings::from_sources(Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`wroker`") && e.contains(&f.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_misspelt_key_inside_a_file_section_is_an_error_naming_the_key_and_the_file() {
        let f = file_with("[worker]\nconcurency = 4\n\n[kinds.booking_attempt]\nmax_attempt = 3\n");
        let e = Settings::from_sources(Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown settings")
                && e.contains("`worker.concurency`")
                && e.contains("`kinds.booking_attempt.max_attempt`")
                && e.contains(&f.display().to_string()),
            "both misspellings, at once: {e}"
        );
        let f = file_with("[kinds.booking_attempt]\nmax_attempt = 3\n");
        let e = Settings::from_sources(Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_attempt") && e.contains(&f.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_top_level_key_in_the_file_is_an_error() {
        let f = file_with("lease = \"1s\"\n");
        let e = Settings::from_sources(Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`lease`") && e.contains(&f.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_fleet_variable_is_an_error_naming_the_variable() {
        let e = Settings::from_sources(None, &env(&[("FLEET_FOO", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLEET_FOO") && e.contains("`foo`"), "{e}");
        let e = Settings::from_sources(None, &env(&[("FLEET_WORKER__CONCURENCY", "3")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("worker.concurency") && e.contains("FLEET_WORKER__CONCURENCY"),
            "{e}"
        );
    }

    #[test]
    fn variables_that_are_not_settings_are_accepted() {
        for (var, _) in OTHER_VARIABLES {
            Settings::from_sources(None, &env(&[(var, "x")])).unwrap();
        }
    }

    #[test]
    fn a_kind_with_a_dot_is_overridable_from_the_environment() {
        let s = Settings::from_sources(
            None,
            &env(&[("FLEET_KINDS__FLEET_DOT_SLEEP__CONCURRENCY", "4")]),
        )
        .unwrap();
        assert_eq!(s.kinds["fleet.sleep"].concurrency, Some(4));
    }

    #[test]
    fn a_bad_log_format_lists_the_valid_ones() {
        let e = Settings::from_sources(None, &env(&[("FLEET_LOG_FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLEET_LOG_FORMAT") && e.contains("human, json"),
            "{e}"
        );
    }

    #[test]
    fn resolve_names_each_source_and_redacts_secrets() {
        let f = file_with("[worker]\nconcurrency = 9\n");
        let r = Settings::resolve(
            Some(&f),
            &env(&[
                ("FLEET_WORKER__LEASE", "20s"),
                ("FLEET_PROVIDERS__STRIPE__SECRET_KEY", "sk_live_hunter2"),
                ("FLEET_PROVIDERS__SMS__AUTH_TOKEN", "twilio_hunter2"),
                ("FLEET_PROVIDERS__KMS__SECRET_ACCESS_KEY", "aws_hunter2"),
                ("FLEET_DATABASE__URL", "postgres://u:hunter2@h/db"),
            ]),
        )
        .unwrap();
        let get = |k: &str| r.values.iter().find(|v| v.key == k).unwrap();
        assert_eq!(
            get("worker.concurrency").source,
            SettingSource::File(f.clone())
        );
        assert_eq!(
            get("worker.lease").source,
            SettingSource::Env("FLEET_WORKER__LEASE".into())
        );
        assert_eq!(get("worker.prefetch").source, SettingSource::Default);
        assert_eq!(get("providers.stripe.secret_key").value, "***");
        assert_eq!(get("providers.sms.auth_token").value, "***");
        assert_eq!(get("providers.kms.secret_access_key").value, "***");
        assert_eq!(
            get("providers.kms.key_id").value,
            "\"alias/parker-kms-key\""
        );
        assert_eq!(get("database.url").value, "***");
        assert!(!format!("{:?}", r.values).contains("hunter2"));
    }

    #[test]
    fn console_users_come_from_the_environment_and_their_hashes_never_print() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$qNbvUiXeSUHuGRkdmlmTTX5hTSEXKthJy0WE1wbIvMM";
        let r = Settings::resolve(
            None,
            &env(&[
                ("FLEET_CONSOLE__USERS__ALICE__ROLE", "operator"),
                ("FLEET_CONSOLE__USERS__ALICE__PASSWORD_HASH", hash),
            ]),
        )
        .unwrap();
        let alice = &r.settings.console.users["alice"];
        assert_eq!(alice.role, ConsoleRole::Operator);
        assert_eq!(alice.password_hash.expose(), hash);
        let shown = r
            .values
            .iter()
            .find(|v| v.key == "console.users.alice.password_hash")
            .unwrap();
        assert_eq!(shown.value, "***");
        assert!(!format!("{:?}", r.settings).contains("qNbvUi"));
    }

    #[test]
    fn a_console_user_without_an_argon2_hash_is_an_error_naming_the_key_not_the_value() {
        for (hash, expect) in [
            ("", "is not set"),
            ("hunter2-plaintext", "not an Argon2 PHC string"),
            (
                "$pbkdf2-sha256$i=1000$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo",
                "expected Argon2",
            ),
        ] {
            let e = Settings::from_sources(
                None,
                &env(&[
                    ("FLEET_CONSOLE__USERS__BOB__ROLE", "viewer"),
                    ("FLEET_CONSOLE__USERS__BOB__PASSWORD_HASH", hash),
                ]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("console.users.bob.password_hash") && e.contains(expect),
                "{hash:?}: {e}"
            );
            assert!(
                hash.is_empty() || !e.contains(hash),
                "the value is not echoed: {e}"
            );
        }
    }

    #[test]
    fn a_bad_console_role_or_tracing_url_is_an_error_naming_it() {
        let e = Settings::from_sources(None, &env(&[("FLEET_CONSOLE__USERS__BOB__ROLE", "admin")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("viewer, operator"), "{e}");
        let e = Settings::from_sources(
            None,
            &env(&[(
                "FLEET_CONSOLE__TRACING_URL",
                "https://jaeger.internal/trace/",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("console.tracing_url") && e.contains("{trace_id}"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_read_url_is_an_error_naming_the_key_not_the_value() {
        for bad in [
            "mysql://u:hunter2@h/db",
            "postgres://u:hunter2@h:notaport/db",
        ] {
            let e = Settings::from_sources(None, &env(&[("FLEET_DATABASE__READ_URL", bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("database.read_url"), "{e}");
            assert!(!e.contains("hunter2"), "the URL is not echoed: {e}");
        }
        let r = Settings::resolve(
            None,
            &env(&[(
                "FLEET_DATABASE__READ_URL",
                "postgres://u:hunter2@replica/db",
            )]),
        )
        .unwrap();
        let shown = r
            .values
            .iter()
            .find(|v| v.key == "database.read_url")
            .unwrap();
        assert_eq!(shown.value, "***");
    }

    #[test]
    fn extra_databases_need_a_url_and_kinds_and_each_kind_lives_in_one() {
        let ok = Settings::from_sources(
            None,
            &env(&[
                ("FLEET_DATABASES__SEARCH__URL", "postgres://h/search"),
                (
                    "FLEET_DATABASES__SEARCH__KINDS",
                    "campaign_search, campaign_scan",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            ok.databases["search"].kinds,
            vec!["campaign_search", "campaign_scan"]
        );
        for (vars, expect) in [
            (
                vec![("FLEET_DATABASES__SEARCH__KINDS", "campaign_search")],
                "databases.search.url is not set",
            ),
            (
                vec![("FLEET_DATABASES__SEARCH__URL", "postgres://h/search")],
                "databases.search.kinds is empty",
            ),
            (
                vec![
                    ("FLEET_DATABASES__MAIN__URL", "postgres://h/x"),
                    ("FLEET_DATABASES__MAIN__KINDS", "a"),
                ],
                "not a database name",
            ),
            (
                vec![
                    ("FLEET_DATABASES__A__URL", "postgres://h/a"),
                    ("FLEET_DATABASES__A__KINDS", "k"),
                    ("FLEET_DATABASES__B__URL", "postgres://h/b"),
                    ("FLEET_DATABASES__B__KINDS", "k"),
                ],
                "a kind's jobs live in one database",
            ),
        ] {
            let e = Settings::from_sources(None, &env(&vars))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{vars:?}: {e}");
        }
    }
}
