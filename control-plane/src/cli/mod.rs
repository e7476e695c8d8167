//! The `meshwork` command line.

mod control;
mod identity;
pub mod plugin;
mod status;
pub mod up;

pub use identity::IdentityArgs;
pub use meshwork_identity::operator::Pointer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshwork_manifest::process::init_tracing;

#[derive(Debug, Parser)]
#[command(
    name = "meshwork",
    version,
    about = "Meshwork service mesh: control plane and CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// This process's log (stderr), and with `meshwork up` its proxies': `text` or `json` (one object per line).
    #[arg(long, global = true, env = "MESHWORK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole mesh locally: control plane, every Workload behind its sidecar, the Gateways.
    Up(up::UpArgs),
    /// Serve the control plane for a manifest directory, following it for changes.
    Control(control::ControlArgs),
    /// Check a manifest directory; exit status 1 on any error.
    Validate {
        /// Directory of *.yaml manifests (read recursively).
        dir: PathBuf,
    },
    /// List the proxies connected to a control plane.
    Status(status::StatusArgs),
    /// Wasm filter tools.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Bootstrap tokens for proxies started outside `meshwork up`.
    #[command(subcommand)]
    Token(identity::TokenCommand),
}

/// A change of the manifests in `dir` that the running control plane refuses (`ControlPlane::admissible`).
pub fn refusal(dir: &std::path::Path, message: String) -> meshwork_manifest::diag::Diagnostics {
    meshwork_manifest::diag::Diagnostics(vec![meshwork_manifest::diag::Diagnostic {
        file: std::sync::Arc::from(dir),
        line: 0,
        field: String::new(),
        message,
    }])
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

pub fn run(cli: Cli) -> ExitCode {
    let json = cli.log_format == "json";
    let result = match cli.command {
        Command::Validate { dir } => return validate(&dir),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Token(cmd) => identity::run_token(cmd),
        Command::Up(args) => {
            // The proxies `meshwork up` starts read it from the environment they inherit (set before any thread).
            std::env::set_var(meshwork_manifest::process::LOG_FORMAT_ENV, &cli.log_format);
            init_tracing("meshwork=info,meshwork_control=info,warn", json);
            runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(up::run(args)))
        }
        Command::Control(args) => {
            init_tracing("info", json);
            runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(control::run(args)))
        }
        Command::Status(args) => runtime()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(status::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(dir: &std::path::Path) -> ExitCode {
    match meshwork_manifest::source::load_dir(dir) {
        Ok(loaded) => {
            let s = &loaded.set;
            println!(
                "ok: {} workloads, {} gateways, {} routes, {} wasm plugins, {} traffic policies{}",
                s.workloads.len(),
                s.gateways.len(),
                s.routes.len(),
                s.wasm_plugins.len(),
                s.policies.len(),
                if s.meshes.is_empty() { "" } else { ", 1 mesh" }
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!(
                "{} error{}",
                diags.0.len(),
                if diags.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}
