//! The `ecr-pull-secrets` binary: parses the command line, sets up logging, runs the command
//! and turns its outcome into the exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ecr_pull_secrets::cli::args::{Cli, Command, LogArgs, LogFormat};
use tracing_subscriber::EnvFilter;

/// RUST_LOG wins over --log-level; either, when invalid, is an error rather than silence.
fn log_filter(args: &LogArgs) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            ecr_pull_secrets::cli::args::parse_log_level(&value)
                .map_err(|e| format!("RUST_LOG: {e}"))?;
            EnvFilter::try_new(value).map_err(|e| format!("RUST_LOG: {e}"))
        }
        _ => EnvFilter::try_new(&args.log_level).map_err(|e| format!("--log-level: {e}")),
    }
}

fn init_logging(args: &LogArgs, filter: EnvFilter) {
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match log_filter(&cli.log) {
        Ok(filter) => init_logging(&cli.log, filter),
        Err(error) => {
            eprintln!("ecr-pull-secrets: {error}");
            return ExitCode::from(2);
        }
    }
    // A panic is a bug: log it and end the process (the Deployment restarts it) instead of
    // letting one task die while the replica still reports ready.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "internal error; exiting so the replica restarts");
        default_hook(info);
        std::process::exit(101);
    }));
    let result = match cli.command {
        Command::Run(args) => ecr_pull_secrets::cli::run::run(args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Cleanup(args) => ecr_pull_secrets::cli::cleanup::cleanup(&args)
            .await
            .map(|_| ExitCode::SUCCESS),
        // Exit 3 when some selected namespace is not in sync (see `status --help`).
        Command::Status(args) => ecr_pull_secrets::cli::status::status(&args)
            .await
            .map(|report| ExitCode::from(report.exit_code())),
        Command::Crd => {
            print!("{}", ecr_pull_secrets::core::crd::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        // The report on stdout is the whole answer; its exit code says whether all passed.
        Command::Check(args) => Ok(if ecr_pull_secrets::cli::check::check(&args).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = %error, "exiting");
            eprintln!("ecr-pull-secrets: {error}");
            ExitCode::FAILURE
        }
    }
}
