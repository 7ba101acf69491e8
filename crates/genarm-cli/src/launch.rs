//! `genarm launch`: a whole GenARM cluster as local processes — a base-worker, one rm-worker per
//! `--rm`, and the router — on loopback, stopped together on Ctrl-C or SIGTERM.

use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::FalseyValueParser;
use clap::{ArgAction, Args};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::supervise::Service;

/// The launcher's own environment variables: not passed on to the services, whose flags of the
/// same names mean something else (e.g. the router's `GENARM_BASE` is a URL).
const OWN_ENV: &[&str] = &[
    "GENARM_BASE",
    "GENARM_RM",
    "GENARM_LAUNCH_LORA",
    "GENARM_PORT",
    "GENARM_HOST",
    "GENARM_TP",
    "GENARM_BIN_DIR",
    "GENARM_STARTUP_TIMEOUT_SECS",
    "GENARM_QUIET",
    "GENARM_ROUTER_ARG",
    "GENARM_WORKER_ARG",
];

/// How long each service gets between SIGTERM and SIGKILL when the launcher stops them.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Flags of `genarm launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The base model: a Hugging Face model directory or a .gguf file. Served by
    /// `genarm-base-worker`; clients name it by its directory's (or file's) name.
    #[arg(long, env = "GENARM_BASE", value_name = "PATH")]
    pub base: PathBuf,

    /// A reward model (ARM) as NAME=PATH, served by its own `genarm-rm-worker`. Repeat the flag
    /// for several (the env variable takes a comma-separated list). Requests weight it by NAME in
    /// `"guidance": {"rewards": {NAME: weight}}`. Repeating a NAME starts replicas: one more
    /// `genarm-rm-worker` per repeat; the router balances sequences over them and fails over.
    #[arg(long = "rm", env = "GENARM_RM", value_name = "NAME=PATH", value_delimiter = ',',
          value_parser = parse_rm)]
    pub rms: Vec<(String, PathBuf)>,

    /// A LoRA adapter for reward model NAME, as NAME=ADAPTER_DIR: its rm-workers serve the
    /// `--rm NAME=PATH` backbone with the adapter merged (`genarm-rm-worker --lora`). Use it for
    /// PEFT adapters whose `base_model_name_or_path` is a hub id rather than a local path.
    #[arg(long = "lora", env = "GENARM_LAUNCH_LORA", value_name = "NAME=ADAPTER", value_delimiter = ',',
          value_parser = parse_rm)]
    pub loras: Vec<(String, PathBuf)>,

    /// Port of the HTTP API (the router). 0 picks a free port.
    #[arg(long, env = "GENARM_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Address the HTTP API listens on. The workers always listen on 127.0.0.1 only; use
    /// 0.0.0.0 to expose the API to other machines.
    #[arg(long, env = "GENARM_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Tensor-parallel ranks of the base model (`genarm-base-worker --tp`).
    #[arg(long, env = "GENARM_TP", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub tp: u32,

    /// Directory holding genarm-base-worker, genarm-rm-worker and genarm-router. Default: the
    /// directory of this `genarm` executable.
    #[arg(long, env = "GENARM_BIN_DIR", value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Seconds the whole cluster may take to load its models and become ready.
    #[arg(long, env = "GENARM_STARTUP_TIMEOUT_SECS", default_value_t = 600, value_name = "SECS")]
    pub startup_timeout_secs: u64,

    /// Do not copy the services' logs to stderr (they are still shown if one fails).
    #[arg(long, env = "GENARM_QUIET", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub quiet: bool,

    /// An extra flag for the router, e.g. `--router-arg=--default-guidance=helpful=1` (repeat
    /// for several). Other `GENARM_*` variables in the environment also reach the services.
    #[arg(long = "router-arg", env = "GENARM_ROUTER_ARG", value_name = "FLAG", allow_hyphen_values = true)]
    pub router_args: Vec<String>,

    /// An extra flag for every worker, e.g. `--worker-arg=--kv-capacity-tokens=65536`.
    #[arg(long = "worker-arg", env = "GENARM_WORKER_ARG", value_name = "FLAG", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,

    /// Extra text printed after the ready banner (`genarm demo` shows its example requests).
    #[arg(skip)]
    pub extra_banner: Option<String>,

    /// Told the API's address once the cluster is ready (`genarm demo` then sends its examples).
    #[arg(skip)]
    pub on_ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
}

fn parse_rm(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=PATH (example: helpful=./arms/helpful)"))?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(format!(
            "reward name `{name}` must be non-empty and use only letters, digits, `_`, `-`, `.`"
        ));
    }
    Ok((name.to_string(), PathBuf::from(path.trim())))
}

/// Runs the launcher until Ctrl-C/SIGTERM (Ok) or until a service fails (Err with its last log
/// lines). Every service is stopped before this returns.
pub async fn run(mut args: LaunchArgs) -> Result<()> {
    let bins = Binaries::find(args.bin_dir.as_deref())?;
    check_model(&args.base, "--base")?;
    for (name, path) in &args.rms {
        check_model(path, &format!("--rm {name}"))?;
    }
    for (name, path) in &args.loras {
        if !args.rms.iter().any(|(n, _)| n == name) {
            bail!("--lora {name}=...: there is no --rm {name}=BACKBONE for the adapter to apply to");
        }
        check_model(path, &format!("--lora {name}"))?;
    }
    // Installed before anything starts, so that an early Ctrl-C is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut services = Vec::new();
    let started = tokio::select! {
        r = start(&mut args, &bins, &mut services) => r.map(Some),
        s = wait_signal(&mut sigint, &mut sigterm) => {
            eprintln!("genarm: {s} during startup, stopping");
            Ok(None)
        }
    };
    let outcome = match started {
        Ok(Some(())) => {
            tokio::select! {
                s = wait_signal(&mut sigint, &mut sigterm) => {
                    eprintln!("genarm: {s}, stopping all services");
                    Ok(())
                }
                e = watch(&mut services) => Err(e),
            }
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    stop_all(&mut services).await;
    outcome
}

/// Paths of the service binaries.
struct Binaries {
    base: PathBuf,
    rm: PathBuf,
    router: PathBuf,
}

impl Binaries {
    fn find(dir: Option<&Path>) -> Result<Binaries> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => {
                let exe = std::env::current_exe().context("locating the genarm executable")?;
                exe.parent().map(Path::to_path_buf).unwrap_or_default()
            }
        };
        let find = |name: &str| -> Result<PathBuf> {
            let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if !path.is_file() {
                bail!(
                    "{name} not found in {}: build every binary with `cargo build --release --workspace --bins` \
                     (they must sit next to genarm), or point --bin-dir at them",
                    dir.display()
                );
            }
            Ok(path)
        };
        Ok(Binaries {
            base: find("genarm-base-worker")?,
            rm: find("genarm-rm-worker")?,
            router: find("genarm-router")?,
        })
    }
}

fn check_model(path: &Path, flag: &str) -> Result<()> {
    if !path.exists() {
        bail!("{flag}: {} does not exist (give a model directory or a .gguf file)", path.display());
    }
    Ok(())
}

fn command(program: &Path, args: impl IntoIterator<Item = OsString>) -> Command {
    let mut command = Command::new(program);
    for var in OWN_ENV {
        command.env_remove(var);
    }
    command.args(args);
    command
}

/// Starts every service (pushed to `services` as they start, so the caller can stop them) and
/// waits until the router is ready; then prints where to reach it.
async fn start(args: &mut LaunchArgs, bins: &Binaries, services: &mut Vec<Service>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.startup_timeout_secs);
    let os = |s: &str| OsString::from(s);
    let worker_listen = [os("--listen"), os("127.0.0.1:0")];

    let mut base_args = vec![os("--model"), args.base.clone().into_os_string()];
    base_args.extend(worker_listen.clone());
    base_args.extend([os("--tp"), os(&args.tp.to_string())]);
    base_args.extend(args.worker_args.iter().map(OsString::from));
    services.push(Service::spawn("base-worker", command(&bins.base, base_args), args.quiet)?);
    for (i, (name, path)) in args.rms.iter().enumerate() {
        let mut rm_args = vec![os("--model"), path.clone().into_os_string(), os("--name"), os(name)];
        if let Some((_, adapter)) = args.loras.iter().find(|(n, _)| n == name) {
            rm_args.extend([os("--lora"), adapter.clone().into_os_string()]);
        }
        rm_args.extend(worker_listen.clone());
        rm_args.extend(args.worker_args.iter().map(OsString::from));
        // Replicas of one reward name: `rm-worker NAME`, `rm-worker NAME #2`, …
        let replica = args.rms[..i].iter().filter(|(n, _)| n == name).count();
        let label = if replica == 0 {
            format!("rm-worker {name}")
        } else {
            format!("rm-worker {name} #{}", replica + 1)
        };
        services.push(Service::spawn(&label, command(&bins.rm, rm_args), args.quiet)?);
    }
    // The workers load their models in parallel; the first to fail ends the wait.
    let addrs = futures::future::try_join_all(services.iter_mut().map(|s| s.listening(deadline))).await?;

    let mut router_args =
        vec![os("--listen"), os(&SocketAddr::new(args.host, args.port).to_string()), os("--base")];
    router_args.push(os(&format!("http://{}", addrs[0])));
    for ((name, _), addr) in args.rms.iter().zip(&addrs[1..]) {
        router_args.extend([os("--rm"), os(&format!("{name}=http://{addr}"))]);
    }
    router_args.extend(args.router_args.iter().map(OsString::from));
    services.push(Service::spawn("router", command(&bins.router, router_args), args.quiet)?);
    let router = services.last_mut().expect("just pushed");
    let http = router.listening(deadline).await?;
    // The address clients use: a wildcard listen address is reachable on loopback.
    let reach =
        if http.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], http.port())) } else { http };

    wait_ready(reach, services, deadline).await?;
    let model = served_model(reach).await.unwrap_or_else(|| {
        args.base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "base".into())
    });
    print_banner(reach, http, &model, args, services, &addrs);
    if let Some(tx) = args.on_ready.take() {
        let _ = tx.send(reach);
    }
    Ok(())
}

/// Polls the router's `/ready` until it answers 200, watching that every service stays up.
async fn wait_ready(addr: SocketAddr, services: &mut [Service], deadline: Instant) -> Result<()> {
    loop {
        for service in services.iter_mut() {
            if service.exited().is_some() {
                return Err(service.died_error("during startup").await);
            }
        }
        let last = match http_get(addr, "/ready").await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            let tails: Vec<String> = services.iter().map(|s| s.log_tail(15)).collect();
            bail!(
                "the router at http://{addr} was not ready in time (last /ready: {last}); see \
                 --startup-timeout-secs\n{}",
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` over HTTP/1.0 (so the answer is never chunked): status and body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange).await.context("timed out")??;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The model name clients send: the first entry of `/v1/models` (the base).
async fn served_model(addr: SocketAddr) -> Option<String> {
    let (status, body) = http_get(addr, "/v1/models").await.ok()?;
    if status != 200 {
        return None;
    }
    let models: serde_json::Value = serde_json::from_str(&body).ok()?;
    models["data"][0]["id"].as_str().map(str::to_string)
}

fn print_banner(
    reach: SocketAddr,
    listen: SocketAddr,
    model: &str,
    args: &LaunchArgs,
    services: &[Service],
    worker_addrs: &[SocketAddr],
) {
    let url = format!("http://{reach}");
    let mut out = String::new();
    out.push_str(&format!("\ngenarm is ready: {url}/v1  (model \"{model}\")\n"));
    for (i, service) in services.iter().enumerate() {
        let at = match worker_addrs.get(i) {
            Some(addr) => format!("grpc http://{addr}"),
            None => format!("http http://{listen}"),
        };
        out.push_str(&format!("  {:<24} pid {:<8} {at}\n", service.label(), service.pid()));
    }
    // Written by hand to keep the fields in the order people read them.
    let guidance = if args.rms.is_empty() {
        String::new()
    } else {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &args.rms {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let rewards: Vec<String> =
            names.iter().map(|name| format!("{}: 1.0", serde_json::json!(name))).collect();
        format!(r#", "guidance": {{"rewards": {{{}}}, "beta": 1.0}}"#, rewards.join(", "))
    };
    let request = format!(
        r#"{{"model": {}, "messages": [{{"role": "user", "content": "Write a haiku about the sea."}}], "max_tokens": 64, "temperature": 0.7{guidance}}}"#,
        serde_json::json!(model)
    );
    // Single-quoted for the shell.
    let request = request.replace('\'', r"'\''");
    out.push_str(&format!(
        "\nTry:\n  curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{request}'\n"
    ));
    if !args.rms.is_empty() {
        out.push_str(
            "(\"guidance\" weights each reward model per request: alpha = weight / beta; leave it out for the \
             plain base model)\n",
        );
    }
    if let Some(extra) = &args.extra_banner {
        out.push_str(extra);
    }
    out.push_str("\nCtrl-C stops all services.\n");
    // The machine-readable line every genarm service prints once it serves.
    out.push_str(&format!("{} http {reach}\n", crate::supervise::LISTENING_PREFIX));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// Resolves when a service exits by itself, with an error naming it.
async fn watch(services: &mut [Service]) -> anyhow::Error {
    loop {
        for service in services.iter_mut() {
            if service.exited().is_some() {
                return service.died_error("while serving; stopping the other services").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_signal(
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> &'static str {
    tokio::select! {
        _ = sigint.recv() => "interrupted (SIGINT)",
        _ = sigterm.recv() => "terminated (SIGTERM)",
    }
}

/// Stops the router first (it finishes or cancels its requests), then the workers together.
async fn stop_all(services: &mut [Service]) {
    if let Some(router) = services.iter_mut().find(|s| s.label() == "router") {
        router.stop(STOP_GRACE).await;
    }
    futures::future::join_all(services.iter_mut().map(|s| s.stop(STOP_GRACE))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        launch: LaunchArgs,
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["genarm", "--base", "m", "--rm", "helpful=a", "--rm", "harmless = b"])
            .unwrap();
        let a = cli.launch;
        assert_eq!(
            a.rms,
            vec![("helpful".into(), PathBuf::from("a")), ("harmless".into(), PathBuf::from("b"))]
        );
        assert_eq!((a.port, a.host.to_string(), a.tp, a.quiet), (8000, "127.0.0.1".into(), 1, false));
        let a = Cli::try_parse_from(["genarm", "--base", "m", "--router-arg=--max-batch-size=4", "--quiet"])
            .unwrap();
        assert_eq!(a.launch.router_args, vec!["--max-batch-size=4"]);
        assert!(a.launch.quiet);
    }

    #[test]
    fn bad_reward_flags_are_refused_with_an_example() {
        assert!(parse_rm("helpful").unwrap_err().contains("NAME=PATH"));
        assert!(parse_rm("=dir").unwrap_err().contains("reward name"));
        assert!(parse_rm("a b=dir").unwrap_err().contains("reward name"));
        assert!(Cli::try_parse_from(["genarm", "--base", "m", "--tp", "0"]).is_err());
    }
}
