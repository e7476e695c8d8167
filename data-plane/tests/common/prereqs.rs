//! What the end-to-end tests need besides Rust, installed on first use so that `cargo test --workspace` works on a
//! fresh machine by itself: the `wasm32-wasip1` target (through rustup, as wasm-pack does), and for the C filter
//! clang, lld, wasi-libc and the wasm32 compiler runtime, and for the dashboard test a headless Chromium (Debian
//! packages, through apt-get as root or with `sudo -n`). Each check is cheap when the thing is already there; a failure says what to install by hand.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The rustup target the filters are built for.
pub fn wasm_target() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if wasm_std_installed() {
            return;
        }
        eprintln!("installing the wasm32-wasip1 target (rustup target add wasm32-wasip1)");
        let ok = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip1"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && wasm_std_installed(),
            "the wasm32-wasip1 target is missing and `rustup target add wasm32-wasip1` did not install it"
        );
    });
}

/// Whether the active toolchain has the standard library for wasm32-wasip1.
fn wasm_std_installed() -> bool {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "target-libdir", "--target", "wasm32-wasip1"])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                })
                .unwrap_or(false)
        }
        _ => false,
    }
}

/// clang able to build a wasm32-wasi reactor against wasi-libc.
pub fn c_toolchain() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let missing = missing_c_packages();
        if missing.is_empty() {
            return;
        }
        eprintln!("installing {} for the C filter (apt-get)", missing.join(" "));
        let installed = apt_get(&["update", "-qq"]) && apt_get(&[&["install", "-y", "-qq"][..], &missing].concat());
        let still = missing_c_packages();
        assert!(
            installed && still.is_empty(),
            "the C filter needs the Debian packages {} (apt-get install {}); installing them failed",
            still.join(" "),
            still.join(" ")
        );
    });
}

/// Debian's Chromium, for the tests that load a page in a real browser. Returns the program to run.
pub fn chromium() -> &'static str {
    static DONE: OnceLock<&'static str> = OnceLock::new();
    DONE.get_or_init(|| {
        let found = || ["chromium", "chromium-browser"].into_iter().find(|p| on_path(p));
        if let Some(p) = found() {
            return p;
        }
        eprintln!("installing chromium for the dashboard test (apt-get)");
        let installed = apt_get(&["update", "-qq"]) && apt_get(&["install", "-y", "-qq", "chromium"]);
        match (installed, found()) {
            (true, Some(p)) => p,
            _ => panic!("the dashboard test needs a headless Chromium (apt-get install chromium); installing it failed"),
        }
    })
}

fn missing_c_packages() -> Vec<&'static str> {
    let mut need = Vec::new();
    if !on_path("clang") {
        need.push("clang");
    }
    if !on_path("wasm-ld") && !Path::new("/usr/bin/wasm-ld-14").exists() {
        need.push("lld");
    }
    if !Path::new("/usr/lib/wasm32-wasi/libc.a").exists() {
        need.push("wasi-libc");
    }
    if !wasm_builtins_present() {
        need.push("libclang-rt-14-dev-wasm32");
    }
    need
}

fn wasm_builtins_present() -> bool {
    let Ok(llvms) = std::fs::read_dir("/usr/lib") else {
        return false;
    };
    llvms
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .filter_map(|e| std::fs::read_dir(e.path().join("lib/clang")).ok())
        .flat_map(|versions| versions.flatten())
        .any(|v| {
            v.path()
                .join("lib/wasi/libclang_rt.builtins-wasm32.a")
                .exists()
        })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// apt-get as root, or through `sudo -n` (never a password prompt in a test run).
fn apt_get(args: &[&str]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    };
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
