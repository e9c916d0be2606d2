//! `fleet console hash-password`: the Argon2 hash that `[console.users.<name>] password_hash`
//! takes, from a password read on standard input (never from an argument: arguments end up
//! in shell history and process lists).

use std::io::Read;

use clap::Subcommand;

#[derive(clap::Args)]
pub struct ConsoleArgs {
    #[command(subcommand)]
    action: ConsoleAction,
}

#[derive(Subcommand)]
enum ConsoleAction {
    /// Read a password on standard input (up to the first newline) and print its Argon2id
    /// hash, for `FLEET_CONSOLE__USERS__<NAME>__PASSWORD_HASH`.
    HashPassword,
}

pub fn run(a: ConsoleArgs) -> anyhow::Result<()> {
    match a.action {
        ConsoleAction::HashPassword => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let password = input.lines().next().unwrap_or("");
            if password.chars().count() < 12 {
                super::usage!("the password must have at least 12 characters");
            }
            println!("{}", crate::console::hash_password(password)?);
            Ok(())
        }
    }
}
