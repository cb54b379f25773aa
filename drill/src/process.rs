//! The shop's processes — its replicas and the fake providers — as the drill runs them:
//! started with a fixed command line, killed with SIGKILL, started again the same way.
//!
//! Separate OS processes on purpose: a replica killed with `kill -9` loses its memory, its
//! in-flight requests, its uncommitted consumer positions and its open transactions, all
//! at once, as a crashed pod does. Aborting tasks inside one process would keep the
//! memory and the connections alive and prove much less.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::DrillError;
use crate::http::Http;

/// One process the drill owns.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// `http://ADDR/PATH` answering 200 once the process is ready.
    ready_url: String,
    /// Times started (the first start included).
    pub starts: u32,
}

impl ManagedProcess {
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: &Path,
        ready_url: String,
    ) -> Self {
        let name = name.into();
        ManagedProcess {
            log: log_dir.join(format!("{name}.log")),
            name,
            program: program.to_path_buf(),
            args,
            env,
            child: None,
            ready_url,
            starts: 0,
        }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process is running (started and not exited).
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none() && self.child.is_some()
    }

    /// Starts the process (appending to its log) without waiting for readiness.
    ///
    /// # Errors
    /// The program cannot be started.
    pub fn spawn(&mut self) -> Result<(), DrillError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| DrillError::io(&self.log, &e))?;
        let log_err = log.try_clone().map_err(|e| DrillError::io(&self.log, &e))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let child = command.spawn().map_err(|e| {
            DrillError::Setup(format!(
                "cannot start {} ({}): {e}",
                self.name,
                self.program.display()
            ))
        })?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Starts the process and waits until its readiness URL answers 200.
    ///
    /// # Errors
    /// The process cannot start, exits, or is not ready within `within` (the tail of its
    /// log is in the error).
    pub async fn start(&mut self, http: &Http, within: Duration) -> Result<Duration, DrillError> {
        let started = tokio::time::Instant::now();
        self.spawn()?;
        self.wait_ready(http, within).await?;
        Ok(started.elapsed())
    }

    /// Waits until the readiness URL answers 200.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn wait_ready(&mut self, http: &Http, within: Duration) -> Result<(), DrillError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(answer) = http.get(&self.ready_url, Duration::from_secs(2)).await
                && answer.status.is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(DrillError::Setup(format!(
                    "{} exited while starting ({status}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(20)
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DrillError::Setup(format!(
                    "{} not ready at {} after {:?}; log {}:\n{}",
                    self.name,
                    self.ready_url,
                    within,
                    self.log.display(),
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM (a graceful stop), then SIGKILL after `grace`.
    pub async fn terminate(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // No signal API without `unsafe` in std; kill(1) is everywhere.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// How the process ended, if it ended on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Forgets an exited process (after its exit was recorded) so it can be started again.
    pub fn clear_exited(&mut self) {
        if self.exited().is_some() {
            self.child = None;
        }
    }

    /// The last `lines` of the process's log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        crate::broker::tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            lines,
        )
    }
}
