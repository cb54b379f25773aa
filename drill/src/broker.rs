//! A private Kafka-API broker with durable storage, which the drill kills with SIGKILL.
//!
//! The broker is tansu (a Kafka-compatible broker written in Rust) with its SQLite storage
//! engine: every record, offset commit and group's state is in one file in the drill's
//! directory, so a broker killed mid-write and started again serves everything it
//! acknowledged before. The test broker of `scripts/kafka.sh` keeps everything in memory —
//! a restart empties it, which is right for tests and useless for a crash drill. Why tansu
//! and not Kafka or Redpanda: it installs from crates.io (`cargo install tansu
//! --no-default-features --features libsql`, see `scripts/tansu-durable.sh`), with no JVM,
//! no Docker and no package repository beyond the registries CI may reach.
//!
//! The broker listens on a port of its own and *advertises* the fault proxy's address, so
//! every client connection — the bootstrap and the ones the metadata points at — crosses
//! the proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::DrillError;

/// The tansu binary and how it was found.
#[derive(Clone, Debug)]
pub struct TansuBinary(pub PathBuf);

impl TansuBinary {
    /// `REPRISE_TANSU_DURABLE_BIN`, else `tansu` on `PATH` (where `cargo install` puts it).
    /// Whether it was built with the SQLite engine shows at start: [`Broker::start`] names
    /// the install command if not.
    ///
    /// # Errors
    /// Neither is found.
    pub fn find() -> Result<Self, DrillError> {
        if let Some(path) = std::env::var_os("REPRISE_TANSU_DURABLE_BIN") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(TansuBinary(path))
            } else {
                Err(DrillError::Setup(format!(
                    "REPRISE_TANSU_DURABLE_BIN={} is not a file",
                    path.display()
                )))
            };
        }
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("tansu"))
            .find(|path| path.is_file())
            .map(TansuBinary)
            .ok_or_else(|| DrillError::Setup(INSTALL_HINT.to_string()))
    }
}

const INSTALL_HINT: &str = "no durable Kafka-API broker: install tansu with its SQLite engine \
(`bash scripts/tansu-durable.sh`, or `cargo install tansu --version 0.6.0 --locked \
--no-default-features --features libsql`) or set REPRISE_TANSU_DURABLE_BIN";

/// The broker process.
#[derive(Debug)]
pub struct Broker {
    binary: TansuBinary,
    dir: PathBuf,
    listen: SocketAddr,
    advertised: SocketAddr,
    child: Option<Child>,
    starts: u32,
}

impl Broker {
    /// Starts tansu on `listen`, advertising `advertised`, storing in `dir/tansu.db`.
    ///
    /// # Errors
    /// The process cannot start, or does not accept connections within 30 s (its log is
    /// named).
    pub async fn start(
        binary: TansuBinary,
        dir: &Path,
        listen: SocketAddr,
        advertised: SocketAddr,
    ) -> Result<Self, DrillError> {
        std::fs::create_dir_all(dir).map_err(|e| DrillError::io(dir, &e))?;
        let mut broker = Broker {
            binary,
            dir: dir.to_path_buf(),
            listen,
            advertised,
            child: None,
            starts: 0,
        };
        broker.restart().await?;
        Ok(broker)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// Where the broker itself listens (clients go through the proxy instead).
    #[must_use]
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Starts the process again (after [`kill`](Self::kill)) on the same storage.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn restart(&mut self) -> Result<(), DrillError> {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| DrillError::io(&self.log_path(), &e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| DrillError::io(&self.log_path(), &e))?;
        let child = Command::new(&self.binary.0)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{}", self.listen)])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{}", self.advertised),
            ])
            // Relative to the working directory (tansu's reading of `sqlite://NAME`).
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                DrillError::Setup(format!(
                    "cannot start the broker {}: {e}",
                    self.binary.0.display()
                ))
            })?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let hint = if log.contains("FeatureNotEnabled") {
                    format!("\n{INSTALL_HINT}")
                } else {
                    String::new()
                };
                return Err(DrillError::Setup(format!(
                    "the broker exited at start ({status}); log {}:\n{}{hint}",
                    self.log_path().display(),
                    tail(&log, 20)
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DrillError::Setup(format!(
                    "the broker does not accept connections on {} after 30 s (log {})",
                    self.listen,
                    self.log_path().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no flush, no goodbye to the clients.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// How the process ended if it ended on its own (a crash), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
