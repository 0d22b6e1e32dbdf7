use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ecr_pull_secrets::config::{Cli, Command, LogArgs, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Run(args) => ecr_pull_secrets::run::run(args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Cleanup(args) => ecr_pull_secrets::cleanup::cleanup(&args)
            .await
            .map(|_| ExitCode::SUCCESS),
        // Exit 3 when some selected namespace is not in sync (see `status --help`).
        Command::Status(args) => ecr_pull_secrets::status::status(&args)
            .await
            .map(|report| ExitCode::from(report.exit_code())),
        Command::Crd => {
            print!("{}", ecr_pull_secrets::crd::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        // The report on stdout is the whole answer; its exit code says whether all passed.
        Command::Check(args) => Ok(if ecr_pull_secrets::check::check(&args).await {
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
