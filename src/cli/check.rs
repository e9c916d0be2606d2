//! `fleet check`: the invariants, with each violation's ids.

use crate::config::Settings;

use super::{db_for, output::print_line};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: CheckArgs, settings: &Settings) -> anyhow::Result<()> {
    let db = db_for(settings).await?;
    let violations = crate::check::run(&db).await?;
    if a.json {
        print_line(&serde_json::json!({ "violations": violations }).to_string())?;
    } else if violations.is_empty() {
        print_line("all invariants hold")?;
    } else {
        for v in &violations {
            print_line(&format!(
                "VIOLATED: {} — ids: {}",
                v.invariant,
                v.ids.join(", ")
            ))?;
        }
    }
    if !violations.is_empty() {
        return Err(super::Finding(format!("{} invariant(s) violated", violations.len())).into());
    }
    Ok(())
}
