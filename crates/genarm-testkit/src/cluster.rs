//! Test-side process harness: the genarm services as real processes on loopback, with hygiene.
//!
//! Every child runs in its own process group and dies with the test: [`ChildProcess`] sends the
//! group SIGTERM, then SIGKILL after a short grace, when it is dropped (also when a test panics),
//! and the kernel kills it (`PR_SET_PDEATHSIG`) if the test process itself is killed. stderr and
//! stdout are kept in a ring buffer, so a failing test prints each service's last log lines.
//! Every wait takes a deadline. [`Cluster`] starts a base-worker, rm-workers and the router
//! (ports chosen by the kernel, `CANDLE_NUM_THREADS=1` for the workers) and waits for `/ready`;
//! [`http`] is a small blocking HTTP/1.1 client for talking to it.
//!
//! The binaries come from the target directory the test runs from ([`bin_path`]): build them
//! first with `cargo build --workspace --bins`.

pub mod http;

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of the line every genarm service prints on stdout once it listens:
/// `GENARM_LISTENING <what> <ip:port>`.
pub const LISTENING_PREFIX: &str = "GENARM_LISTENING";

/// How long a child gets between SIGTERM and SIGKILL when it is stopped.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Lines of output kept per child.
const LOG_LINES: usize = 400;

/// Lines printed per child when a test fails.
const FAILURE_LINES: usize = 60;

/// The built binary `name` in the target directory this test executable runs from
/// (`target/<profile>/<name>`; tests run from `target/<profile>/deps/`), or in `$GENARM_BIN_DIR`
/// when that is set. An error telling how to build it if it is missing.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("GENARM_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("locating the test executable")?;
            let mut dir = exe.parent().ok_or_else(|| anyhow!("{} has no parent", exe.display()))?;
            if dir.file_name() == Some(OsStr::new("deps")) {
                dir = dir.parent().unwrap_or(dir);
            }
            dir.to_path_buf()
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "{name} not found at {}: run `cargo build --workspace --bins` first \
             (or set GENARM_BIN_DIR to the directory holding the genarm binaries)",
            path.display()
        );
    }
    if let Some(changed) = changed_since_built(&path, &dir.join(format!("{name}.d"))) {
        bail!(
            "{name} at {} is older than its source {}, changed after the build: the test would run \
             stale code; run `cargo build --workspace --bins` first",
            path.display(),
            changed.display()
        );
    }
    Ok(path)
}

/// A source file of the binary at `bin` modified after the binary was built, if any, from the
/// dependency list cargo writes next to it (`<name>.d`: `bin: src1 src2 ...`, spaces in paths
/// escaped). Without that file (a prebuilt bundle) nothing can be checked.
fn changed_since_built(bin: &Path, dep_info: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let text = std::fs::read_to_string(dep_info).ok()?;
    let (_, deps) = text.lines().next()?.split_once(": ")?;
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => paths.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    paths.push(current);
    paths
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .find(|p| std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|modified| modified > built))
}

/// Output lines of a child, newest last, at most [`LOG_LINES`].
#[derive(Default)]
struct LogTail {
    lines: VecDeque<String>,
    dropped: usize,
}

impl LogTail {
    fn push(&mut self, line: String) {
        if self.lines.len() == LOG_LINES {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line);
    }
}

/// A child process in its own process group, killed (the whole group) when dropped.
pub struct ChildProcess {
    name: String,
    child: Child,
    /// Lines printed on stdout, in order, as they arrive (in a mutex so that a `&Cluster` can
    /// be shared between request threads).
    stdout_rx: Mutex<Receiver<String>>,
    /// stdout lines received so far through `stdout_rx`.
    stdout: Vec<String>,
    /// stderr and stdout, interleaved as read, last lines only.
    log: Arc<Mutex<LogTail>>,
    readers: Vec<JoinHandle<()>>,
    listening: Option<SocketAddr>,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `command` as `name` (used in messages): stdin closed, stdout and stderr captured,
    /// a new process group, SIGKILL when the spawning thread's process dies. With
    /// `GENARM_TEST_ECHO=1` the child's output is also copied to this process's stderr.
    pub fn spawn(name: &str, mut command: Command) -> Result<ChildProcess> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {name} ({})", command.get_program().to_string_lossy()))?;
        let echo = std::env::var("GENARM_TEST_ECHO").is_ok_and(|v| v == "1");
        let log = Arc::new(Mutex::new(LogTail::default()));
        let (tx, stdout_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let readers = vec![
            spawn_reader(format!("{name} stdout"), stdout, log.clone(), Some(tx), echo),
            spawn_reader(format!("{name} stderr"), stderr, log.clone(), None, echo),
        ];
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            stdout_rx: Mutex::new(stdout_rx),
            stdout: Vec::new(),
            log,
            readers,
            listening: None,
            status: None,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (= its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the child prints `GENARM_LISTENING <what> <addr>` on stdout and returns the
    /// address. Fails, with the child's last log lines, if it exits first or `deadline` passes.
    pub fn wait_listening(&mut self, deadline: Instant) -> Result<SocketAddr> {
        if let Some(addr) = self.listening {
            return Ok(addr);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_rx.get_mut().unwrap_or_else(|e| e.into_inner()).recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if let Some(addr) = parse_listening(&line) {
                        let addr = addr.with_context(|| format!("{}: bad line {line:?}", self.name))?;
                        self.listening = Some(addr);
                        return Ok(addr);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} did not print `{LISTENING_PREFIX} ...` in time\n{}",
                        self.name,
                        self.log_tail(FAILURE_LINES)
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Instant::now() + TERM_GRACE);
                    bail!(
                        "{} closed stdout before listening ({})\n{}",
                        self.name,
                        match status {
                            Ok(s) => format!("exited: {s}"),
                            Err(e) => format!("{e:#}"),
                        },
                        self.log_tail(FAILURE_LINES)
                    )
                }
            }
        }
    }

    /// Every stdout line the child printed so far (collects what arrived without waiting).
    pub fn stdout_lines(&mut self) -> &[String] {
        while let Ok(line) = self.stdout_rx.get_mut().unwrap_or_else(|e| e.into_inner()).try_recv() {
            self.stdout.push(line);
        }
        &self.stdout
    }

    /// Waits until stdout has a line satisfying `pred` and returns it; fails on exit or deadline.
    pub fn wait_stdout_line(&mut self, deadline: Instant, pred: impl Fn(&str) -> bool) -> Result<String> {
        if let Some(line) = self.stdout_lines().iter().find(|l| pred(l)) {
            return Ok(line.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_rx.get_mut().unwrap_or_else(|e| e.into_inner()).recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(e) => bail!(
                    "{}: no expected stdout line ({})\n{}",
                    self.name,
                    if e == RecvTimeoutError::Timeout { "deadline passed" } else { "stdout closed" },
                    self.log_tail(FAILURE_LINES)
                ),
            }
        }
    }

    /// The last `n` lines of output (stderr and stdout interleaved), headed by the child's name.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.lines.len().saturating_sub(n);
        let mut out = format!(
            "---- last {} log lines of {} (pid {}) ----\n",
            log.lines.len() - skip,
            self.name,
            self.child.id()
        );
        for line in log.lines.iter().skip(skip) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// The exit status if the child has exited (then its output has been read to the end, or
    /// for at most a second if something else holds its pipes).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
            if self.status.is_some() {
                self.await_readers();
            }
        }
        self.status
    }

    /// Waits (up to a second) until the output reader threads reached the end of the pipes.
    fn await_readers(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the child to exit by itself, until `deadline`.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} (pid {}) still running at the deadline", self.name, self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the child's whole process group (no-op once it has been reaped).
    pub fn signal_group(&mut self, signal: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill(2) with a negative pid signals the group we created for the child.
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), signal);
            }
        }
    }

    /// SIGTERM to the group, waits up to `grace`, then SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        self.signal_group(libc::SIGTERM);
        let status = match self.wait_exit(Instant::now() + grace) {
            Ok(status) => status,
            Err(_) => {
                self.signal_group(libc::SIGKILL);
                let status = self.child.wait().expect("waiting for a killed child");
                self.await_readers();
                status
            }
        };
        // Anything else left in the group (the leader is gone, so the group id is unused
        // unless stragglers hold it).
        // SAFETY: as in `signal_group`.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        self.status = Some(status);
        status
    }

    /// Kills the group at once (SIGKILL, no grace) and reaps it, like a crash.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        self.signal_group(libc::SIGKILL);
        let status = self.child.wait().expect("waiting for a killed child");
        self.await_readers();
        self.status = Some(status);
        status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(FAILURE_LINES));
        }
        self.stop(TERM_GRACE);
        // Readers still blocked after `stop` (a pipe held by a process that left the group) are
        // detached rather than waited for.
        self.await_readers();
        for reader in self.readers.drain(..).filter(|r| r.is_finished()) {
            let _ = reader.join();
        }
    }
}

/// `Some(addr)` if `line` is a `GENARM_LISTENING <what> <addr>` line.
fn parse_listening(line: &str) -> Option<Result<SocketAddr>> {
    let rest = line.trim().strip_prefix(LISTENING_PREFIX)?.strip_prefix(' ')?;
    let addr = rest.split_whitespace().nth(1);
    Some(
        addr.ok_or_else(|| anyhow!("no address"))
            .and_then(|a| a.parse().with_context(|| format!("address {a:?}"))),
    )
}

fn spawn_reader(
    label: String,
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<LogTail>>,
    tx: Option<mpsc::Sender<String>>,
    echo: bool,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(label.clone())
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                if echo {
                    eprintln!("[{label}] {line}");
                }
                log.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
                if let Some(tx) = &tx {
                    let _ = tx.send(line);
                }
            }
        })
        .expect("spawning a log reader thread")
}

/// What [`Cluster::start`] runs.
#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    /// The base model (a directory or `.gguf`).
    pub base: PathBuf,
    /// Reward models: `(reward name, model path)`, one rm-worker each, passed to the router in
    /// this order.
    pub rms: Vec<(String, PathBuf)>,
    /// Extra arguments for the router (after `--listen`, `--base` and `--rm`).
    pub router_args: Vec<String>,
    /// Extra arguments for every worker (after `--model`, `--listen` and `--name`).
    pub worker_args: Vec<String>,
    /// How long startup may take until `/ready`; `None` = 120 s.
    pub startup_timeout: Option<Duration>,
}

/// A running base-worker, rm-workers and router on 127.0.0.1; stopped (router first) on drop.
pub struct Cluster {
    /// The router (declared first: dropped first).
    pub router: ChildProcess,
    /// `(reward name, rm-worker)` in the order of [`ClusterSpec::rms`].
    pub rms: Vec<(String, ChildProcess)>,
    /// The base-worker.
    pub base: ChildProcess,
    router_addr: SocketAddr,
    base_addr: SocketAddr,
    rm_addrs: Vec<SocketAddr>,
}

/// A `Command` for a genarm binary with a clean environment: no inherited `GENARM_*` variables,
/// `RUST_LOG` defaulting to `info`.
pub fn genarm_command(name: &str) -> Result<Command> {
    let mut command = Command::new(bin_path(name)?);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GENARM_") {
            command.env_remove(key);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    Ok(command)
}

/// A worker command: `--model PATH --listen 127.0.0.1:0`, one candle thread.
fn worker_command(bin: &str, model: &Path, extra: &[String]) -> Result<Command> {
    let mut command = genarm_command(bin)?;
    command.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(model).args(["--listen", "127.0.0.1:0"]);
    command.args(extra);
    Ok(command)
}

impl Cluster {
    /// Starts the workers (loading in parallel), then the router pointing at them, and waits
    /// for the router's `/ready`. Fails with the failing process's last log lines.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        let deadline = Instant::now() + spec.startup_timeout.unwrap_or(Duration::from_secs(120));
        let mut base = ChildProcess::spawn(
            "base-worker",
            worker_command("genarm-base-worker", &spec.base, &spec.worker_args)?,
        )?;
        let mut rms = Vec::new();
        for (name, path) in &spec.rms {
            let mut command = worker_command("genarm-rm-worker", path, &[])?;
            command.args(["--name", name]).args(&spec.worker_args);
            rms.push((name.clone(), ChildProcess::spawn(&format!("rm-worker {name}"), command)?));
        }
        let base_addr = base.wait_listening(deadline)?;
        let mut rm_addrs = Vec::new();
        for (_, rm) in &mut rms {
            rm_addrs.push(rm.wait_listening(deadline)?);
        }
        let mut command = genarm_command("genarm-router")?;
        command.args(["--listen", "127.0.0.1:0", "--base", &format!("http://{base_addr}")]);
        for ((name, _), addr) in rms.iter().zip(&rm_addrs) {
            command.arg("--rm").arg(format!("{name}=http://{addr}"));
        }
        command.args(&spec.router_args);
        let mut router = ChildProcess::spawn("router", command)?;
        let router_addr = router.wait_listening(deadline)?;
        let mut cluster = Cluster { router, rms, base, router_addr, base_addr, rm_addrs };
        cluster.wait_ready(deadline)?;
        Ok(cluster)
    }

    /// Polls the router's `/ready` until it answers 200; fails at `deadline` or if the router
    /// exits, with the last log lines of every process.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(status) = self.router.try_status() {
                bail!("the router exited ({status}) before it was ready\n{}", self.log_tails());
            }
            let last = match http::get(&self.url("/ready")) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("router /ready not 200 in time (last: {last})\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://<router addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.router_addr)
    }

    /// The router's HTTP address.
    pub fn router_addr(&self) -> SocketAddr {
        self.router_addr
    }

    /// The base-worker's gRPC endpoint, `http://ip:port`.
    pub fn base_grpc_url(&self) -> String {
        format!("http://{}", self.base_addr)
    }

    /// The gRPC endpoints (`http://ip:port`) of the rm-workers serving `name`.
    pub fn rm_grpc_urls(&self, name: &str) -> Vec<String> {
        self.rms
            .iter()
            .zip(&self.rm_addrs)
            .filter(|((n, _), _)| n == name)
            .map(|(_, addr)| format!("http://{addr}"))
            .collect()
    }

    /// Every worker's gRPC endpoint: the base first, then the rm-workers in spec order.
    pub fn worker_grpc_urls(&self) -> Vec<String> {
        std::iter::once(self.base_addr)
            .chain(self.rm_addrs.iter().copied())
            .map(|a| format!("http://{a}"))
            .collect()
    }

    /// The first rm-worker serving `name`.
    pub fn rm_mut(&mut self, name: &str) -> &mut ChildProcess {
        let (_, rm) =
            self.rms.iter_mut().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no rm-worker {name:?}"));
        rm
    }

    /// The last log lines of every process.
    pub fn log_tails(&self) -> String {
        let mut out = self.router.log_tail(FAILURE_LINES);
        for (_, rm) in &self.rms {
            out.push_str(&rm.log_tail(FAILURE_LINES));
        }
        out.push_str(&self.base.log_tail(FAILURE_LINES));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_older_than_a_source_it_was_built_from_is_found_stale() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("my src.rs");
        let other = dir.path().join("lib.rs");
        let bin = dir.path().join("svc");
        std::fs::write(&src, "fn main() {}").unwrap();
        std::fs::write(&other, "").unwrap();
        std::fs::write(&bin, "binary").unwrap();
        let dep_info = dir.path().join("svc.d");
        let escaped = src.display().to_string().replace(' ', "\\ ");
        std::fs::write(&dep_info, format!("{}: {} {}\n", bin.display(), other.display(), escaped)).unwrap();
        let at = |secs: u64| std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let touch = |p: &Path, secs: u64| {
            std::fs::File::options().write(true).open(p).unwrap().set_modified(at(secs)).unwrap()
        };
        touch(&src, 1_000);
        touch(&other, 1_000);
        touch(&bin, 2_000);
        assert_eq!(changed_since_built(&bin, &dep_info), None, "built after its sources");
        touch(&src, 3_000);
        assert_eq!(
            changed_since_built(&bin, &dep_info),
            Some(src.clone()),
            "a source changed after the build"
        );
        assert_eq!(
            changed_since_built(&bin, &dir.path().join("missing.d")),
            None,
            "no dep-info: nothing to check"
        );
    }
}
