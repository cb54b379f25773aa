//! A private PostgreSQL instance the drill may crash.
//!
//! The shared test cluster (`scripts/postgres.sh`) serves every other test and tool on the
//! machine; stopping it with `-m immediate` would fail them, not the shop. So a drill
//! creates its own data directory with `initdb` and runs `postgres` on a port of its own —
//! seconds to create, and a crash (`pg_ctl stop -m immediate`: no shutdown checkpoint, the
//! next start replays the WAL, exactly as after a power cut of the server process) touches
//! nobody else.
//!
//! PostgreSQL refuses to run as root; when the drill is root (CI containers), the server's
//! commands run as the `postgres` user through `runuser`, which owns the data directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::DrillError;

/// A PostgreSQL server in a directory of the drill's.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates the cluster in `dir/pg` and starts it on `port` (loopback only, trust
    /// authentication: nothing but this machine can reach it).
    ///
    /// # Errors
    /// No PostgreSQL binaries, or `initdb`/`pg_ctl` failing (their output is in the error).
    pub async fn create(dir: &Path, port: u16) -> Result<Self, DrillError> {
        let bin = find_bin_dir()?;
        let as_postgres = running_as_root().await;
        let server = PrivatePostgres {
            bin,
            dir: dir.to_path_buf(),
            port,
            as_postgres,
        };
        std::fs::create_dir_all(dir).map_err(|e| DrillError::io(dir, &e))?;
        if as_postgres {
            run(
                Command::new("chown").arg("postgres:postgres").arg(dir),
                "chown",
            )
            .await?;
        }
        let data = server.data_dir();
        server
            .tool("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .status_ok("initdb")
            .await?;
        server.start().await?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("pg")
    }

    fn tool(&self, name: &str) -> Tool {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.stdin(Stdio::null());
        Tool(command)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` — or through `address` (a proxy).
    #[must_use]
    pub fn url_via(&self, address: std::net::SocketAddr) -> String {
        format!("postgres://postgres@{address}/postgres")
    }

    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    /// `pg_ctl start` failing (its log is named).
    pub async fn start(&self) -> Result<(), DrillError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on",
            self.port,
            self.dir.display()
        );
        self.tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "start"])
            .status_ok("pg_ctl start")
            .await
    }

    /// Stops the server the hard way: every backend killed, no checkpoint; the next start
    /// runs crash recovery.
    ///
    /// # Errors
    /// `pg_ctl stop` failing.
    pub async fn crash(&self) -> Result<(), DrillError> {
        self.stop_mode("immediate").await
    }

    /// A clean shutdown (the end of a drill).
    ///
    /// # Errors
    /// `pg_ctl stop` failing.
    pub async fn stop(&self) -> Result<(), DrillError> {
        self.stop_mode("fast").await
    }

    async fn stop_mode(&self, mode: &str) -> Result<(), DrillError> {
        self.tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .status_ok("pg_ctl stop")
            .await
    }

    /// Whether the server answers (`pg_isready`).
    pub async fn is_ready(&self) -> bool {
        let mut tool = self.tool("pg_isready");
        tool.0
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        matches!(tool.0.status().await, Ok(status) if status.success())
    }
}

struct Tool(Command);

impl Tool {
    fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.0.arg(arg);
        self
    }

    fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.0.args(args);
        self
    }

    async fn status_ok(&mut self, what: &str) -> Result<(), DrillError> {
        run(&mut self.0, what).await
    }
}

async fn run(command: &mut Command, what: &str) -> Result<(), DrillError> {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .map_err(|_| DrillError::Setup(format!("{what} did not finish within 120 s")))?
        .map_err(|e| DrillError::Setup(format!("cannot run {what}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DrillError::Setup(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// `REPRISE_PG_BIN`, else the newest `/usr/lib/postgresql/<major>/bin` (Debian's layout,
/// where `initdb` is not on `PATH`), else `pg_config --bindir`'s answer is not consulted:
/// a directory on `PATH` holding `initdb`.
fn find_bin_dir() -> Result<PathBuf, DrillError> {
    if let Some(dir) = std::env::var_os("REPRISE_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(DrillError::Setup(format!(
            "REPRISE_PG_BIN={} holds no initdb",
            dir.display()
        )));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").is_file())
        .ok_or_else(|| {
            DrillError::Setup(
                "no PostgreSQL server binaries (initdb): install PostgreSQL or set REPRISE_PG_BIN"
                    .into(),
            )
        })
}

async fn running_as_root() -> bool {
    match Command::new("id").arg("-u").output().await {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim() == "0",
        Err(_) => false,
    }
}

impl Drop for PrivatePostgres {
    /// A drill interrupted (Ctrl-C, a panic) must not leave a server running: `pg_ctl`
    /// daemonizes it, so the child-process cleanup that ends the shop's processes does not
    /// reach it. Blocking here is fine: it is the end of the drill.
    fn drop(&mut self) {
        let mut command = if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            command
        } else {
            std::process::Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
