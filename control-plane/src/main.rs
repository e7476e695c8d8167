//! The `meshwork` binary: parses the command line and hands it to [`meshwork_control::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = meshwork_control::cli::Cli::parse();
    meshwork_control::cli::run(cli)
}
