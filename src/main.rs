//! The `chronos` binary: parses its command line (see `cli/`) and runs the command it names.

use std::process::ExitCode;

use clap::Parser;

use chronos::error::Error;
use cli::{Cli, Command};

mod cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cli::serve::serve(args).await,
            Command::CheckConfig { path, connect } => cli::serve::check_config(path, connect).await,
            Command::Operator(args) => chronos::operator::run(args).await.map_err(operator_error),
            Command::Crds => chronos::operator::crds_yaml()
                .map(|yaml| print!("{yaml}"))
                .map_err(operator_error),
            Command::Scrub(args) => cli::scrub::run(args).await,
            Command::Rebuild(args) => cli::history::rebuild(args).await,
            Command::Verify(args) => cli::history::verify(args).await,
            Command::Hold(args) => cli::hold::run(args).await,
            Command::Erase(args) => cli::erase::run(args).await,
            Command::Client(cmd) => cli::client::run(cmd).await,
            Command::Watch(args) => cli::watch::watch(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn operator_error(e: chronos::operator::Error) -> Error {
    Error::Command(Box::new(e))
}
