//! `fleet seed`: synthetic users, profiles, cards and campaigns for staging and load tests.
//! Resumable: a user already written (by its deterministic address) is skipped, so an
//! interrupted seed finishes by running it again. Refuses a database with real users.

use std::time::Duration;

use crate::config::Settings;
use jobs::seed::Mix;

use super::{db_for, os_user, output::emit, usage};

#[derive(clap::Args)]
pub struct SeedArgs {
    /// How many users (each with a profile, a card and a campaign).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// simple: every campaign books (LHR→JFK, a good card); demo: every sandbox scenario,
    /// scenario cards, unbookable prices, expiring cards.
    #[arg(long, default_value = "simple", value_parser = ["simple", "demo"])]
    mix: String,
    /// Spread the campaigns' first searches evenly over this long from now (e.g. "5m");
    /// default: all due at once.
    #[arg(long, value_parser = humantime::parse_duration)]
    spread: Option<Duration>,
    /// Who is acting (recorded in audit_log; default: the OS user).
    #[arg(long)]
    actor: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: SeedArgs, settings: &Settings) -> anyhow::Result<()> {
    // The workers' keys: KMS-wrapped data keys, or FLEET_PII_KEYS.
    let keys = jobs::Deps {
        keys: Some(std::sync::Arc::new(super::roles::pii_keys(settings)?)),
        ..jobs::Deps::default()
    };
    if a.users == 0 {
        usage!("--users must be >= 1");
    }
    let mix = if a.mix == "demo" {
        Mix::Demo
    } else {
        Mix::Simple
    };
    let db = db_for(settings).await?;
    let keyring = keys.keyring_for(&db).await?;
    let real = jobs::seed::count_real_users(&db).await?;
    if real > 0 {
        usage!(
            "the database holds {real} user(s) that are not seed data (addresses outside {}): \
             fleet seed only fills staging and local databases",
            jobs::seed::SEED_EMAIL_DOMAIN
        );
    }
    let bar = indicatif::ProgressBar::new(a.users as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} seeding [{bar:30}] {pos}/{len} users")
            .expect("static template")
            .progress_chars("=> "),
    );
    if a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut written, mut skipped) = (0usize, 0usize);
    for n in 0..a.users {
        let mut s = mix.seed(n);
        if let Some(spread) = a.spread {
            s.first_search_in = spread.mul_f64(n as f64 / a.users as f64);
        }
        if jobs::seed::seed_exists(&db, &s).await? {
            skipped += 1;
        } else {
            jobs::seed::seed_campaign(&db, &keyring, &s).await?;
            written += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let meta = serde_json::json!({
        "users": a.users, "written": written, "skipped": skipped, "mix": a.mix,
        "spread_s": a.spread.map(|d| d.as_secs()),
        "key_version": keyring.newest_version(),
    });
    jobs::audit::record(
        &db,
        &a.actor.unwrap_or_else(os_user),
        "seed.run",
        "seed",
        None,
        &meta,
    )
    .await?;
    let text = format!(
        "seeded {written} user(s) ({} mix), {skipped} already there; PII sealed with key v{}",
        a.mix,
        keyring.newest_version()
    );
    emit(a.json, &meta, &text)
}
