//! `genarm launch` as a user runs it: it starts the three kinds of services, serves guided
//! requests, prints the URL and a sample curl, stops every service on SIGTERM or Ctrl-C (SIGINT
//! to its process group), and exits non-zero with the failing worker's last log lines when one
//! dies at startup, leaving no process behind.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use genarm_testkit::cluster::genarm_command;

fn launch(args: &[&str]) -> ChildProcess {
    let mut command = genarm_command("genarm").unwrap();
    command.env("CANDLE_NUM_THREADS", "1").arg("launch").args(["--port", "0", "--quiet"]).args(args);
    ChildProcess::spawn("genarm launch", command).unwrap()
}

/// `(label, pid, address)` of each service from the launcher's banner lines
/// (`  <label> pid <pid> grpc|http http://<addr>`).
fn services(stdout: &[String]) -> Vec<(String, u32, String)> {
    stdout
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "pid")?;
            let pid = words.get(at + 1)?.parse().ok()?;
            let addr = words.last()?.strip_prefix("http://")?.to_string();
            Some((words[..at].join(" "), pid, addr))
        })
        .collect()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Every running process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Starts a launcher, checks it serves (with the base on `tp` ranks), stops it with `signal`
/// (SIGTERM to the launcher, or SIGINT to its process group as a terminal's Ctrl-C does) and
/// checks nothing is left.
fn serve_then_stop(args: &[&str], signal: libc::c_int, guided: bool, tp: u32) {
    let mut launcher = launch(args);
    let addr = launcher
        .wait_listening(Instant::now() + Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("http://{addr}");
    let stdout = launcher.stdout_lines().to_vec();
    let banner = stdout.join("\n");
    assert!(banner.contains(&url), "the banner should print the URL {url}:\n{banner}");
    assert!(banner.contains("curl") && banner.contains("/v1/chat/completions"), "no sample curl:\n{banner}");
    assert_eq!(banner.contains("\"guidance\""), guided, "the sample curl's guidance:\n{banner}");
    let services = services(&stdout);
    let expected = if guided { 3 } else { 2 };
    assert_eq!(services.len(), expected, "the banner should list {expected} services:\n{banner}");

    assert_eq!(http::get(&format!("{url}/ready")).unwrap().status, 200);
    let (_, _, base_addr) = services.iter().find(|(label, _, _)| label == "base-worker").unwrap();
    assert_eq!(info(&format!("http://{base_addr}")).tp_size, tp, "the base-worker's tensor-parallel size");
    let mut body = completion("Once upon a time", 6);
    if guided {
        body = with_guidance(body, &[("gqa", 1.0)], 1.0);
    }
    let r = http::post_json(&format!("{url}/v1/completions"), &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The banner's curl works as printed (minus the shell quoting).
    let curl_line = stdout.iter().find(|l| l.contains("curl ")).unwrap();
    let sample = curl_line.split_once("-d '").unwrap().1.trim_end_matches('\'');
    let r = http::request(
        "POST",
        &format!("{url}/v1/chat/completions"),
        &[("Content-Type", "application/json")],
        sample.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "the sample request failed: {}", r.text());

    for (label, pid, _) in &services {
        assert!(process_exists(*pid), "{label} (pid {pid}) is not running");
    }
    let stopping = Instant::now();
    launcher.signal_group(signal);
    let status =
        launcher.wait_exit(Instant::now() + Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        status.success(),
        "the launcher should exit 0 after a stop signal, got {status}\n{}",
        launcher.log_tail(40)
    );
    eprintln!("stopped in {:?}", stopping.elapsed());
    for (label, pid, addr) in &services {
        assert!(!process_exists(*pid), "{label} (pid {pid}) survived the launcher");
        assert!(TcpStream::connect(addr).is_err(), "{label} still accepts connections on {addr}");
    }
}

#[test]
fn launch_serves_guided_requests_and_sigterm_stops_every_service() {
    let _serial = serial();
    let base = fixture(BASE);
    let rm = format!("gqa={}", fixture("llama-gqa-tied").display());
    serve_then_stop(&["--base", base.to_str().unwrap(), "--rm", &rm, "--tp", "2"], libc::SIGTERM, true, 2);
}

#[test]
fn ctrl_c_stops_every_service() {
    let _serial = serial();
    let base = fixture(BASE);
    serve_then_stop(&["--base", base.to_str().unwrap()], libc::SIGINT, false, 1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_worker_dying_at_startup_fails_the_launch_with_its_last_log_lines() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    // A private copy of the base, so that leftover processes can be found by their arguments.
    let base: PathBuf = tmp.path().join("base-model");
    copy_dir(&fixture(BASE), &base);
    let broken = tmp.path().join("broken-arm");
    copy_dir(&fixture("llama-gqa-tied"), &broken);
    std::fs::write(broken.join("config.json"), "{\"model_type\": \"llama\", \"hidden_size\": ").unwrap();

    let rm = format!("bad={}", broken.display());
    let mut launcher = launch(&["--base", base.to_str().unwrap(), "--rm", &rm]);
    let status =
        launcher.wait_exit(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    let log = launcher.log_tail(200);
    assert!(!status.success(), "the launcher should fail when a worker dies at startup:\n{log}");
    assert!(log.contains("rm-worker bad"), "the error should name the failing worker:\n{log}");
    assert!(log.contains("config.json"), "the error should show the worker's own last log lines:\n{log}");
    assert!(
        !log.contains("GENARM_LISTENING http"),
        "the launcher announced a cluster that never came up:\n{log}"
    );
    let left = processes_mentioning(tmp.path().to_str().unwrap());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn launch_fails_clearly_on_a_missing_model_or_missing_binaries() {
    let _serial = serial();
    let mut launcher = launch(&["--base", "/nonexistent/model"]);
    let status = launcher.wait_exit(Instant::now() + Duration::from_secs(20)).unwrap();
    assert!(!status.success());
    assert!(launcher.log_tail(20).contains("/nonexistent/model"), "{}", launcher.log_tail(20));

    let empty = tempfile::tempdir().unwrap();
    let mut command = genarm_command("genarm").unwrap();
    command.args(["launch", "--base"]).arg(fixture(BASE)).arg("--bin-dir").arg(empty.path());
    let mut launcher = ChildProcess::spawn("genarm launch", command).unwrap();
    let status = launcher.wait_exit(Instant::now() + Duration::from_secs(20)).unwrap();
    let log = launcher.log_tail(20);
    assert!(!status.success());
    assert!(log.contains("genarm-base-worker not found") && log.contains("cargo build"), "{log}");
}

#[test]
fn every_launch_flag_reads_an_env_var_and_is_explained() {
    let out = Command::new(genarm_testkit::cluster::bin_path("genarm").unwrap())
        .args(["launch", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<&str> =
        help.lines().filter(|l| l.trim_start().starts_with("--") && !l.contains("--help")).collect();
    assert!(flags.len() >= 6, "{help}");
    for line in &flags {
        assert!(line.contains("[env: GENARM_"), "flag without an env var: {line}");
        let words = line.split_whitespace().count();
        assert!(words > 5, "flag without an explanation: {line}");
    }
    // Env vars work like flags: a GENARM_BASE that does not exist is reported.
    let out = Command::new(genarm_testkit::cluster::bin_path("genarm").unwrap())
        .arg("launch")
        .env("GENARM_BASE", "/nonexistent/from-env")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/from-env"));
}

#[test]
fn a_service_dying_while_serving_stops_the_launch_with_its_name() {
    let _serial = serial();
    let base = fixture(BASE);
    let rm = format!("gqa={}", fixture("llama-gqa-tied").display());
    let mut launcher = launch(&["--base", base.to_str().unwrap(), "--rm", &rm]);
    launcher.wait_listening(Instant::now() + Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}"));
    let services = services(launcher.stdout_lines());
    let (_, rm_pid, _) = services.iter().find(|(label, _, _)| label == "rm-worker gqa").unwrap().clone();
    // SAFETY: kill(2) on a process this test's launcher started.
    unsafe {
        libc::kill(rm_pid as libc::pid_t, libc::SIGKILL);
    }
    let status =
        launcher.wait_exit(Instant::now() + Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
    let log = launcher.log_tail(60);
    assert!(!status.success(), "the launcher should fail when a service dies:\n{log}");
    assert!(
        log.contains("rm-worker gqa") && log.contains("signal 9"),
        "the error should say who died and how:\n{log}"
    );
    for (label, pid, addr) in &services {
        assert!(!process_exists(*pid), "{label} (pid {pid}) survived the launcher");
        assert!(TcpStream::connect(addr).is_err(), "{label} still accepts connections on {addr}");
    }
}
