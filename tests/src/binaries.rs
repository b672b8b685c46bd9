//! Finds the wsmq binaries, building them first when needed.
//!
//! `cargo nextest run --workspace` (like `cargo test --workspace`) only builds a package's
//! binaries for that package's own integration tests; the gateway, bridge and worker binaries
//! are other packages', so it compiles them as unit-test harnesses and never produces
//! `target/<profile>/wsmq-gateway`. The harness therefore runs `cargo build --bins` for them
//! once per test process, with the same profile as the test: a no-op when they are fresh, and it
//! guarantees the tests never run stale binaries. Set `WSMQ_BIN_DIR` to skip the build and use
//! the binaries in that directory instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::BUILD_TIMEOUT;

/// The packages whose binaries the tests run.
const PACKAGES: [&str; 7] = [
    "wsmq-gateway",
    "wsmq-bridge",
    "wsmq-demo-worker",
    "wsmq-cli",
    "wsmq-ipc-tool",
    "wsmq-bench",
    "wsmq-conformance",
];

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `wsmq-gateway`.
    pub gateway: PathBuf,
    /// `wsmq-bridge`.
    pub bridge: PathBuf,
    /// `wsmq-worker`, the demo worker.
    pub worker: PathBuf,
    /// `wsmq`, the command-line client.
    pub cli: PathBuf,
    /// `wsmq-ipc`, the socket debugging tool (its `ping` is a minimal IPC client).
    pub ipc: PathBuf,
    /// `wsmq-bench`, the load generator.
    pub bench: PathBuf,
    /// `wsmq-conformance`, the conformance kit.
    pub conformance: PathBuf,
}

static BINARIES: OnceCell<Binaries> = OnceCell::const_new();

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The binaries, built (once per process) unless `WSMQ_BIN_DIR` is set.
pub async fn binaries() -> Result<&'static Binaries> {
    BINARIES.get_or_try_init(locate).await
}

async fn locate() -> Result<Binaries> {
    let dir = match std::env::var_os("WSMQ_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = profile_dir()?;
            build(&dir).await?;
            dir
        }
    };
    let bins = Binaries {
        gateway: dir.join("wsmq-gateway"),
        bridge: dir.join("wsmq-bridge"),
        worker: dir.join("wsmq-worker"),
        cli: dir.join("wsmq"),
        ipc: dir.join("wsmq-ipc"),
        bench: dir.join("wsmq-bench"),
        conformance: dir.join("wsmq-conformance"),
    };
    for bin in [
        &bins.gateway,
        &bins.bridge,
        &bins.worker,
        &bins.cli,
        &bins.ipc,
        &bins.bench,
        &bins.conformance,
    ] {
        ensure!(
            bin.is_file(),
            "{} does not exist (set WSMQ_BIN_DIR to the directory holding the wsmq binaries)",
            bin.display()
        );
    }
    Ok(bins)
}

/// `target/<profile>/`, from this process's own path: `target/<profile>/deps/<test>-<hash>`
/// for a test, `target/<profile>/<name>` for a binary of this crate (the soak runner).
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the executable's path")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()
            .with_context(|| format!("{} is not in target/<profile>/deps/", exe.display()))?
    } else {
        dir
    };
    Ok(dir.to_path_buf())
}

async fn build(profile_dir: &Path) -> Result<()> {
    // The directory is named after the profile, except the dev profile's, which is `debug`.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => bail!(
            "cannot tell the cargo profile from {}",
            profile_dir.display()
        ),
    };
    let manifest = workspace_root().join("Cargo.toml");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--profile", profile, "--bins"])
        .args(PACKAGES.iter().flat_map(|p| ["-p", p]))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // Cargo gives this test process the variables it sets for a crate being built or tested
    // (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Passed on, they reach build scripts that declare
    // `rerun-if-env-changed` on them (ring does), so this build and the next `cargo nextest`
    // would rebuild those crates back and forth. Give the nested cargo a clean slate.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_per_crate_cargo_var) {
            cmd.env_remove(&name);
        }
    }
    let out = tokio::time::timeout(BUILD_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("building the wsmq binaries took over {BUILD_TIMEOUT:?}"))?
        .context("cannot run cargo to build the wsmq binaries")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`cargo build` of the wsmq binaries failed ({}):\n{}",
            out.status,
            tail.join("\n")
        );
    }
    Ok(())
}

/// Whether `name` is one of the variables cargo sets for the crate it compiles or runs.
fn is_per_crate_cargo_var(name: &str) -> bool {
    const PREFIXES: [&str; 2] = ["CARGO_PKG_", "CARGO_BIN_"];
    const NAMES: [&str; 7] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}
