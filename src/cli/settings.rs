//! `fleet config show`: the settings in effect, where each came from, secrets redacted; and
//! every kind's resolved settings (code defaults with `[kinds.*]` on top).

use std::path::Path;

use clap::Subcommand;
use fleet::{config::Settings, fleet_registry};
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
    let resolved = Settings::resolve(file, &fleet::config::fleet_env())?;
    let registry = fleet_registry(&resolved.settings)?;
    let mut settings = table(&["setting", "value", "source"]);
    for v in &resolved.values {
        settings.add_row(vec![v.key.clone(), v.value.clone(), v.source.to_string()]);
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
    let value = json!({
        "settings": resolved.values.iter().map(|v| json!({
            "key": v.key, "value": v.value, "source": v.source.to_string(),
        })).collect::<Vec<_>>(),
        "kinds": kinds_json,
    });
    let text = format!("{settings}\n\nkinds (code defaults; * = overridden in [kinds.*])\n{kinds}");
    emit(json, &value, &text)
}
