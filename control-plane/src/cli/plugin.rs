//! `meshwork plugin build PATH`: builds a Rust filter crate to `.wasm` for wasm32-wasip1 and prints its sha256
//! (the value for a WasmPlugin's `spec.sha256`), adding the wasm32-wasip1 target first when the toolchain lacks it
//! (as wasm-pack does). `meshwork up` uses the same build for WasmPlugins that name their crate (`spec.build`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Build a Rust filter crate (a cdylib using proxy-wasm or meshwork-plugin-sdk) for wasm32-wasip1.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The filter crate's directory (or its Cargo.toml).
    pub path: PathBuf,
    /// Build without optimisations.
    #[arg(long)]
    pub debug: bool,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Build(args) => build(&args.path, !args.debug).map(|(wasm, digest)| {
            println!("built {}", wasm.display());
            println!("sha256 {digest}");
        }),
    }
}

/// Builds and returns the `.wasm` path and its sha256. Progress (cargo's own) goes to stderr.
pub fn build(path: &Path, release: bool) -> anyhow::Result<(PathBuf, String)> {
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.to_path_buf()
    };
    anyhow::ensure!(
        manifest.exists(),
        "{}: no Cargo.toml here (expected a Rust filter crate)",
        manifest.display()
    );
    ensure_wasm_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--target",
        "wasm32-wasip1",
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(&manifest);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "building {} for wasm32-wasip1{}",
        manifest.display(),
        if release { " (release)" } else { "" }
    );
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("run cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut wasm = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" {
            let kinds = msg["target"]["kind"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let manifest_matches = msg["manifest_path"]
                .as_str()
                .map(Path::new)
                .and_then(|p| p.canonicalize().ok())
                == manifest.canonicalize().ok();
            if manifest_matches && kinds.iter().any(|k| k == "cdylib") {
                wasm = msg["filenames"].as_array().and_then(|f| {
                    f.iter()
                        .filter_map(|v| v.as_str())
                        .find(|f| f.ends_with(".wasm"))
                        .map(PathBuf::from)
                });
            }
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "cargo build of {} for wasm32-wasip1 failed (its errors are above)",
        manifest.display()
    );
    let wasm = wasm.context(
        "the crate produced no .wasm: is it a cdylib ([lib] crate-type = [\"cdylib\"])?",
    )?;
    let digest: String = Sha256::digest(std::fs::read(&wasm)?)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((wasm, digest))
}

/// Adds the wasm32-wasip1 target to the active toolchain when its standard library is missing (a fresh machine,
/// or `RUSTUP_AUTO_INSTALL=0` so that rust-toolchain.toml's `targets` are not installed by themselves).
pub fn ensure_wasm_target() -> anyhow::Result<()> {
    if wasm_std_installed() {
        return Ok(());
    }
    eprintln!("adding the wasm32-wasip1 target (rustup target add wasm32-wasip1)");
    let added = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip1"])
        .status()
        .context("run rustup: the wasm32-wasip1 target is missing, and rustup (which would add it) is not on PATH")?;
    anyhow::ensure!(
        added.success() && wasm_std_installed(),
        "`rustup target add wasm32-wasip1` failed; filters cannot be built without that target"
    );
    Ok(())
}

fn wasm_std_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip1"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success()
        && std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
}

/// Builds every WasmPlugin of `dir` that names its crate (`spec.build`) and puts each module where its `url`
/// says (the build's own output path differs when CARGO_TARGET_DIR is set). Runs before the manifests load.
pub fn build_declared(dir: &Path) -> anyhow::Result<()> {
    let builds = meshwork_manifest::source::files::declared_builds(dir)
        .map_err(|d| anyhow::anyhow!("invalid manifests:\n{d}"))?;
    for b in builds {
        let (wasm, _) = build(&b.crate_dir, true).with_context(|| {
            format!(
                "WasmPlugin {}: spec.build {}",
                b.plugin,
                b.crate_dir.display()
            )
        })?;
        // The copy writes where the manifest says: only ever a `.wasm` module.
        anyhow::ensure!(
            b.module.extension().is_some_and(|e| e == "wasm"),
            "WasmPlugin {}: spec.url {} must name a .wasm file when spec.build is given",
            b.plugin,
            b.module.display()
        );
        if wasm.canonicalize().ok() != b.module.canonicalize().ok() {
            if let Some(parent) = b.module.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&wasm, &b.module).with_context(|| {
                format!(
                    "WasmPlugin {}: copy {} to its url {}",
                    b.plugin,
                    wasm.display(),
                    b.module.display()
                )
            })?;
        }
    }
    Ok(())
}
