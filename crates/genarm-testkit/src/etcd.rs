//! Test-side etcd: [`EtcdServer`] runs a real single-member `etcd` (Debian's `etcd-server`
//! package, `/usr/bin/etcd`, or `$GENARM_ETCD_BIN`) on free loopback ports with its own data
//! directory, waits until it answers `/health`, and kills its process group and removes the data
//! directory when dropped (process hygiene from [`crate::cluster::ChildProcess`]). Fault tests
//! [`EtcdServer::stop`] and [`EtcdServer::restart`] it on the same ports and data.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{http, ChildProcess};

/// A running etcd server for one test.
pub struct EtcdServer {
    /// The etcd process (its output is kept for failure messages).
    pub process: ChildProcess,
    client_url: String,
    peer_url: String,
    bin: PathBuf,
    data_dir: PathBuf,
}

/// The etcd binary: `$GENARM_ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
pub fn etcd_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GENARM_ETCD_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).find(|f| f.is_file()))
        .unwrap_or_default();
    let path = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    if !path.is_file() {
        bail!(
            "the etcd server binary is not installed (looked on PATH and at /usr/bin/etcd): install it \
             with `apt-get install -y etcd-server`, or set GENARM_ETCD_BIN to its path"
        );
    }
    Ok(path)
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd and waits (up to 20 s) until `/health` answers healthy. Retries with other
    /// ports if the chosen ones were taken in between.
    pub fn start() -> Result<EtcdServer> {
        let bin = etcd_bin()?;
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin) {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("etcd did not start: {last}")
    }

    fn try_start(bin: &std::path::Path) -> Result<EtcdServer> {
        let (client, peer) = (free_port()?, free_port()?);
        let data_dir =
            std::env::temp_dir().join(format!("genarm-etcd-{}-{client}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let process = ChildProcess::spawn("etcd", etcd_command(bin, &data_dir, &client_url, &peer_url))?;
        let mut server = EtcdServer { process, client_url, peer_url, bin: bin.to_path_buf(), data_dir };
        server.wait_healthy(Instant::now() + Duration::from_secs(20))?;
        Ok(server)
    }

    /// Kills etcd (SIGKILL, like a crash); its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts etcd again on the same ports with the same data (after [`Self::stop`]) and waits
    /// (up to 20 s) until it answers healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.process.kill();
        let command = etcd_command(&self.bin, &self.data_dir, &self.client_url, &self.peer_url);
        self.process = ChildProcess::spawn("etcd (restarted)", command)?;
        self.wait_healthy(Instant::now() + Duration::from_secs(20))
    }
}

/// The etcd command line: one member named `genarm-test` on these URLs and data directory.
fn etcd_command(
    bin: &std::path::Path,
    data_dir: &std::path::Path,
    client_url: &str,
    peer_url: &str,
) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--name")
        .arg("genarm-test")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", client_url, "--advertise-client-urls", client_url])
        .args(["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", &format!("genarm-test={peer_url}")])
        .args(["--initial-cluster-state", "new", "--log-level", "warn"])
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
    command
}

impl EtcdServer {
    fn wait_healthy(&mut self, deadline: Instant) -> Result<()> {
        let url = format!("{}/health", self.client_url);
        loop {
            if let Some(status) = self.process.try_status() {
                bail!("etcd exited ({status}) before it answered\n{}", self.process.log_tail(40));
            }
            let last = match http::get(&url) {
                Ok(r) if r.status == 200 && r.text().contains("true") => return Ok(()),
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "etcd at {} not healthy in time (last: {last})\n{}",
                    self.client_url,
                    self.process.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URL, `http://127.0.0.1:<port>` (what `--etcd` takes).
    pub fn url(&self) -> &str {
        &self.client_url
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A number distinct for each call in this process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
