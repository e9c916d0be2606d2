//! `fleet config show`: the settings in effect, where each came from, secrets redacted; and
//! every kind's resolved settings (code defaults with `[kinds.*]` on top).

use std::path::Path;

use crate::{config::Settings, database, fleet_registry};
use clap::Subcommand;
use serde_json::json;

use super::output::{emit, short, table};

#[derive(clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the resolved settings with their sources (secrets redacted) and every kind's
    /// settings.
    Show {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: ConfigArgs, file: Option<&Path>) -> anyhow::Result<()> {
    let ConfigAction::Show { json } = a.action;
    let resolved = Settings::resolve(file, &crate::config::fleet_env())?;
    let registry = fleet_registry(&resolved.settings)?;
    let mut settings = table(&["setting", "value", "source"]);
    for v in &resolved.values {
        settings.add_row(vec![v.key.clone(), v.value.clone(), v.source.to_string()]);
    }
    // The key and where it came from are read whole (a file's path is copied): only values
    // wrap.
    for c in [0, 2] {
        if let Some(col) = settings.column_mut(c) {
            col.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }
    let mut kinds = table(&[
        "kind",
        "queue",
        "conc.",
        "attempts",
        "backoff",
        "timeout",
        "key window",
        "prio",
    ]);
    let mut kinds_json = Vec::new();
    for name in registry.kind_names() {
        let k = registry.settings(&name).expect("registered");
        let overridden = resolved.settings.kinds.contains_key(&name);
        kinds.add_row(vec![
            if overridden {
                format!("{name} *")
            } else {
                name.clone()
            },
            k.queue.clone(),
            k.concurrency.map_or("-".into(), |c| c.to_string()),
            k.max_attempts.to_string(),
            format!("{}…{}", short(k.backoff_base), short(k.backoff_cap)),
            short(k.timeout),
            short(k.idempotency_window),
            k.priority.to_string(),
        ]);
        kinds_json.push(json!({
            "kind": name, "queue": k.queue, "concurrency": k.concurrency,
            "max_attempts": k.max_attempts, "backoff_base_ms": k.backoff_base.as_millis() as u64,
            "backoff_cap_ms": k.backoff_cap.as_millis() as u64,
            "timeout_ms": k.timeout.as_millis() as u64,
            "idempotency_window_ms": k.idempotency_window.as_millis() as u64,
            "priority": k.priority, "overridden_by_config": overridden,
        }));
    }
    let mut connections = table(&["setting", "target", "TLS in effect"]);
    let mut connections_json = Vec::new();
    for (setting, endpoint) in endpoints(&resolved.settings) {
        let (target, tls, error) = match &endpoint {
            Ok(e) => (e.target(), e.tls.to_string(), None),
            Err(e) => ("-".to_owned(), "-".to_owned(), Some(e.to_string())),
        };
        connections.add_row(vec![
            setting.clone(),
            target.clone(),
            error.clone().map_or(tls.clone(), |e| format!("error: {e}")),
        ]);
        connections_json.push(json!({
            "setting": setting, "target": target,
            "tls": endpoint.as_ref().ok().map(|e| &e.tls), "error": error,
        }));
    }
    let value = json!({
        "settings": resolved.values.iter().map(|v| json!({
            "key": v.key, "value": v.value, "source": v.source.to_string(),
        })).collect::<Vec<_>>(),
        "connections": connections_json,
        "kinds": kinds_json,
    });
    let text = format!(
        "{settings}\n\nconnections (URL parameters over [database] settings; no password shown)\n\
         {connections}\n\nkinds (code defaults; * = overridden in [kinds.*])\n{kinds}"
    );
    emit(json, &value, &text)
}

/// Every database URL configured, with what it resolves to (or why it does not).
fn endpoints(s: &Settings) -> Vec<(String, Result<database::Endpoint, database::DatabaseError>)> {
    let db = &s.database;
    let mut out = Vec::new();
    match database::Endpoint::main(db) {
        Err(database::DatabaseError::NotConfigured) => {}
        r => out.push((
            r.as_ref()
                .map_or("database.url".into(), |e| e.setting.clone()),
            r,
        )),
    }
    match database::Endpoint::main_reads(db) {
        Ok(None) => {}
        Ok(Some(e)) => out.push((e.setting.clone(), Ok(e))),
        Err(e) => out.push(("database.read_url".into(), Err(e))),
    }
    for (name, d) in &s.databases {
        out.push((
            format!("databases.{name}.url"),
            database::Endpoint::of(name, d, db),
        ));
        match database::Endpoint::reads_of(name, d, db) {
            Ok(None) => {}
            r => out.push((
                format!("databases.{name}.read_url"),
                r.map(|e| e.expect("some")),
            )),
        }
    }
    out
}
