//! The real `wash` CLI (0.43, the v1 CLI), run against a test's lattice
//! with folders of its own, so that nothing it reads or writes is the
//! user's.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::process::Command;

/// Overrides where the `wash` executable is.
pub const WASH_BIN_ENV: &str = "WASH_BIN";

/// The version the tests are written against.
pub const WASH_VERSION: &str = "0.43.0";

/// Longest a `wash` command may run: `wash build` compiles the provider.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// The `wash` executable: `$WASH_BIN`, else where `.ci/run` installs it
/// (`~/.cache/messaging-nats/wash-0.43.0/bin/wash`), else `wash` on the
/// `PATH`.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(WASH_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let cached = std::env::var_os("HOME").map(|home| {
        PathBuf::from(home)
            .join(".cache/messaging-nats")
            .join(format!("wash-{WASH_VERSION}"))
            .join("bin/wash")
    });
    if let Some(cached) = cached.filter(|path| path.exists()) {
        return Ok(cached);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("wash"))
        .find(|path| path.exists());
    found.with_context(|| {
        format!(
            "wash {WASH_VERSION} not found: install it with `cargo install --locked wash \
             --version {WASH_VERSION}` (.ci/run does) or name it in ${WASH_BIN_ENV}"
        )
    })
}

/// `wash` aimed at one lattice, with a home, config, data and cache folder
/// of its own.
pub struct Wash {
    binary: PathBuf,
    home: tempfile::TempDir,
    nats_port: u16,
    lattice: String,
    /// More environment, as a user's shell might have it.
    env: Vec<(String, String)>,
}

/// What one `wash` command did.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertions on what a user sees.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Fails unless the command succeeded.
    pub fn ok(self) -> Result<Self> {
        if !self.success {
            bail!("wash failed:\n{}", self.output());
        }
        Ok(self)
    }

    /// The standard output as JSON (for `-o json`).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("wash printed no JSON:\n{}", self.output()))
    }
}

impl Wash {
    /// `wash` for the lattice `lattice` on the NATS server at
    /// 127.0.0.1:`nats_port`.
    pub fn new(nats_port: u16, lattice: &str) -> Result<Self> {
        Ok(Self {
            binary: binary()?,
            home: tempfile::Builder::new().prefix("wash-home").tempdir()?,
            nats_port,
            lattice: lattice.to_string(),
            env: Vec::new(),
        })
    }

    /// Sets `key=value` in the environment of every command.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The folder that stands for the user's home (keys live under it).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Runs `wash args...` in `dir`, as a user with this home would after
    /// `export WASMCLOUD_LATTICE=... WASMCLOUD_CTL_PORT=...`.
    pub async fn run(&self, dir: &Path, args: &[&str]) -> Result<Run> {
        let mut command = Command::new(&self.binary);
        command.args(args);
        self.run_in(command, dir).await
    }

    /// Runs a shell command line (a README block) in `dir`, with this
    /// `wash` first on the `PATH`; the first command that fails ends it
    /// with its status, as a user pasting it would see.
    pub async fn shell(&self, dir: &Path, line: &str) -> Result<Run> {
        let wash_dir = self.binary.parent().context("wash has no folder")?;
        let path = std::env::join_paths(
            std::iter::once(wash_dir.to_path_buf()).chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths),
            ),
        )?;
        let mut command = Command::new("bash");
        let script = format!("set -euo pipefail\n{line}");
        command.args(["-c", &script]).env("PATH", path);
        self.run_in(command, dir).await
    }

    /// Runs `command` in `dir` with this home and lattice, to its end
    /// (bounded: the process is killed after [`COMMAND_TIMEOUT`]).
    async fn run_in(&self, mut command: Command, dir: &Path) -> Result<Run> {
        let home = self.home.path();
        command
            .current_dir(dir)
            .env("HOME", home)
            .env("WASH_CONFIG_DIR", home.join(".config/wash"))
            .env("WASH_DATA_DIR", home.join(".local/share/wash"))
            .env("WASH_CACHE_DIR", home.join(".cache/wash"))
            .env("WASH_DISABLE_PLUGINS", "1")
            .env("WASMCLOUD_CTL_HOST", "127.0.0.1")
            .env("WASMCLOUD_CTL_PORT", self.nats_port.to_string())
            .env("WASMCLOUD_LATTICE", &self.lattice)
            .env_remove("WASH_KEYS")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let shown = format!("{command:?}");
        let output: Output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .with_context(|| format!("{shown} did not end within {COMMAND_TIMEOUT:?}"))?
            .with_context(|| format!("cannot run {shown}"))?;
        Ok(Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
