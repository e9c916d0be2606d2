//! `fleet seed`: synthetic users, profiles, cards and campaigns for staging and local runs.

use anyhow::bail;
use fleet::config::Settings;

use super::pool_for;

#[derive(clap::Args)]
pub struct SeedArgs {
    /// How many users.
    #[arg(long, default_value_t = 100)]
    users: usize,
}

pub async fn run(a: SeedArgs, settings: &Settings) -> anyhow::Result<()> {
    let keyring = jobs::pii::Keyring::from_env()?;
    let pool = pool_for(settings).await?;
    let existing = jobs::seed::count_users(&pool).await?;
    if existing > 0 {
        bail!("the database already has {existing} users: fleet seed only fills empty (staging/local) databases");
    }
    for n in 0..a.users {
        jobs::seed::seed_campaign(&pool, &keyring, &jobs::seed::CampaignSeed::new(n)).await?;
    }
    println!(
        "seeded {} users (key version v{})",
        a.users,
        keyring.newest_version()
    );
    Ok(())
}
