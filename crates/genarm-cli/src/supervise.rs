//! Supervision of the service processes `genarm launch` starts: each in its own process group
//! (so Ctrl-C in the terminal reaches only the launcher, which then stops them in order), killed
//! by the kernel if the launcher dies (`PR_SET_PDEATHSIG`), its stderr forwarded with a
//! `[label]` prefix and its last lines kept for error reports, its `GENARM_LISTENING` line
//! parsed from stdout.
//!
//! Spawn from the thread that lives as long as the launcher (the launcher runs a
//! current-thread runtime): the death signal fires when the spawning thread exits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Prefix of the line every genarm service prints on stdout once it listens:
/// `GENARM_LISTENING <what> <ip:port>`.
pub const LISTENING_PREFIX: &str = "GENARM_LISTENING";

/// Output lines kept per service for error reports.
const KEPT_LINES: usize = 200;

/// A running service process.
pub struct Service {
    label: String,
    child: Child,
    pid: u32,
    log: Arc<Mutex<VecDeque<String>>>,
    listening: Option<oneshot::Receiver<Result<SocketAddr, String>>>,
    addr: Option<SocketAddr>,
    status: Option<ExitStatus>,
    /// The tasks copying stdout and stderr.
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Spawns `command` as the service `label`. Its stderr (and any stdout other than the
    /// `GENARM_LISTENING` line) is copied to this process's stderr as `[label] line` unless
    /// `quiet`, and kept for [`Service::log_tail`].
    pub fn spawn(label: &str, mut command: Command, quiet: bool) -> Result<Service> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = command.as_std().get_program().to_string_lossy().into_owned();
        let mut child = command.spawn().with_context(|| format!("starting {label} ({program})"))?;
        let pid = child.id().ok_or_else(|| anyhow!("{label} exited at once"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = oneshot::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let pumps = vec![
            tokio::spawn(pump(label.to_string(), stdout, log.clone(), quiet, Some(tx))),
            tokio::spawn(pump(label.to_string(), stderr, log.clone(), quiet, None)),
        ];
        Ok(Service {
            label: label.to_string(),
            child,
            pid,
            log,
            listening: Some(rx),
            addr: None,
            status: None,
            pumps,
        })
    }

    /// The label given at spawn (`base-worker`, `rm-worker helpful`, `router`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Process id (= process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the service's `GENARM_LISTENING` line and returns its address; fails with the
    /// service's last log lines if it exits first, or at `deadline`.
    pub async fn listening(&mut self, deadline: Instant) -> Result<SocketAddr> {
        if let Some(addr) = self.addr {
            return Ok(addr);
        }
        let rx = self.listening.take().ok_or_else(|| anyhow!("{} never listened", self.label))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(addr))) => {
                self.addr = Some(addr);
                Ok(addr)
            }
            Ok(Ok(Err(line))) => bail!("{} printed a malformed line {line:?}", self.label),
            Ok(Err(_closed)) => {
                // stdout closed: the process is exiting; give it a moment to be reaped.
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                let how = match status {
                    Ok(Ok(status)) => {
                        self.status = Some(status);
                        describe(status)
                    }
                    _ => "closed its stdout".to_string(),
                };
                self.drain_output().await;
                bail!("{} (pid {}) {how} during startup\n{}", self.label, self.pid, self.log_tail(30))
            }
            Err(_) => bail!(
                "{} (pid {}) did not start listening in time (see --startup-timeout)\n{}",
                self.label,
                self.pid,
                self.log_tail(30)
            ),
        }
    }

    /// The exit status if the process has exited (without blocking).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// An error naming the service, how it exited and its last log lines (read to the end).
    pub async fn died_error(&mut self, when: &str) -> anyhow::Error {
        self.drain_output().await;
        let how = self.exited().map(describe).unwrap_or_else(|| "stopped".into());
        anyhow!("{} (pid {}) {how} {when}\n{}", self.label, self.pid, self.log_tail(30))
    }

    /// Waits (up to a second) until the service's output has been read to the end, so that
    /// its last words are in the log.
    async fn drain_output(&mut self) {
        let pumps = std::mem::take(&mut self.pumps);
        let _ = tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(pumps)).await;
    }

    /// Sends SIGTERM to the service's process group, waits up to `grace`, then SIGKILLs it.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        signal_group(self.pid, libc::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!("genarm: {} did not stop within {grace:?}; killing it", self.label);
                signal_group(self.pid, libc::SIGKILL);
                self.child.wait().await.ok()
            }
        };
        self.status = status;
        status
    }

    /// The last `n` output lines, headed by the service's label.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.len().saturating_sub(n);
        let mut out = format!("--- last {} log lines of {} ---", log.len() - skip, self.label);
        for line in log.iter().skip(skip) {
            out.push('\n');
            out.push_str(line);
        }
        out
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exited().is_none() {
            signal_group(self.pid, libc::SIGKILL);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("exited ({status})"),
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on the process group we created for the child.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// Copies a child's output: the first `GENARM_LISTENING` line goes to `listening` (when given),
/// everything else to the log (and this process's stderr unless `quiet`).
async fn pump(
    label: String,
    stream: impl AsyncRead + Unpin,
    log: Arc<Mutex<VecDeque<String>>>,
    quiet: bool,
    mut listening: Option<oneshot::Sender<Result<SocketAddr, String>>>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
        if let Some(rest) = line.strip_prefix(LISTENING_PREFIX) {
            if let Some(tx) = listening.take() {
                let addr = rest.split_whitespace().nth(1).and_then(|a| a.parse().ok());
                let _ = tx.send(addr.ok_or_else(|| line.clone()));
                continue;
            }
        }
        if !quiet {
            eprintln!("[{label}] {line}");
        }
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == KEPT_LINES {
            log.pop_front();
        }
        log.push_back(line);
    }
}
