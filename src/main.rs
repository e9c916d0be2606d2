//! The `fleet` binary: parses the command line, loads settings, starts telemetry, and hands
//! off to one command ([`cli::run`]).

mod cli;

use clap::Parser;
use fleet::{config::Settings, telemetry};

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleet: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The OTLP batch exporter spawns onto the runtime: initialise inside it.
    // The cron library logs its own start-up at info ("Uninited", "Job creator created"):
    // noise for operators, so only its warnings show.
    let log_file = cli::log_file(&cli.command);
    let tracer = rt.block_on(async {
        telemetry::init(
            settings.log_format,
            cli::default_log_filter(&cli.command),
            log_file.as_deref(),
        )
    });
    let result = rt.block_on(cli::run(cli.command, settings, cli.config.as_deref()));
    if let Some(t) = tracer {
        let _ = t.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e:#}");
            std::process::ExitCode::from(cli::exit_code(&e))
        }
    }
}
