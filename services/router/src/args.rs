//! Command-line flags of `genarm-router` (each also read from a `GENARM_*` environment variable).

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// The router's configuration, from flags or `GENARM_*` environment variables.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "genarm-router",
    version,
    about = "genarm router: OpenAI-compatible HTTP API over a base-worker and reward-model workers \
             (GenARM guided decoding with continuous batching)",
    long_about = None
)]
pub struct Args {
    /// Address to listen on for HTTP, as host:port (port 0 picks a free port). Once bound, the
    /// router prints `GENARM_LISTENING http <ip:port>` on stdout.
    #[arg(long, env = "GENARM_LISTEN", value_name = "HOST:PORT", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// gRPC URL of the base-worker, e.g. `http://127.0.0.1:50051`. Required unless --etcd is
    /// given (then base-workers are found in etcd; a --base URL is used as well, as a member that
    /// never expires).
    #[arg(long, env = "GENARM_BASE", value_name = "URL", required_unless_present = "etcd")]
    pub base: Option<String>,

    /// A reward model as NAME=URL, e.g. `helpful=http://127.0.0.1:50052`. Repeat the flag for
    /// several reward models (the env variable takes a comma-separated list). NAME must match the
    /// worker's own `--name`; requests refer to it in `guidance.rewards`. Repeating a NAME with
    /// another URL adds a replica: each sequence is placed on the least loaded replica and fails
    /// over to another (replaying its tokens) if its replica fails. With --etcd, NAME alone
    /// declares a reward model whose workers are found in etcd: the router serves exactly the
    /// reward names given here, is ready when the base and each of them has a ready worker, and
    /// ignores (with a log line) workers registered under other reward names.
    #[arg(long = "rm", env = "GENARM_RM", value_name = "NAME[=URL]", value_delimiter = ',', value_parser = parse_rm)]
    pub rms: Vec<RewardWorker>,

    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379): discover workers registered
    /// under /genarm/<--cluster>/workers/, adding them as they register (after checking their
    /// protocol version and vocabulary against the base) and removing them when their key
    /// disappears (deregistered, or lease expired). Without it, only --base/--rm URLs are used.
    #[arg(long, env = "GENARM_ETCD", value_name = "URLS")]
    pub etcd: Option<String>,

    /// Cluster name whose workers to discover in etcd (the workers' --cluster).
    #[arg(long, env = "GENARM_CLUSTER", value_name = "NAME", default_value = "default")]
    pub cluster: String,

    /// Mutual TLS to the workers (`--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-server-name`)
    /// and etcd TLS/authentication (`--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`,
    /// `--etcd-password`).
    #[command(flatten)]
    pub tls: genarm_tls::RouterTlsArgs,

    /// The model name clients put in `"model"`. Default: the base worker's model id (its
    /// directory's or GGUF file's name).
    #[arg(long, env = "GENARM_SERVED_MODEL_NAME", value_name = "NAME")]
    pub served_model_name: Option<String>,

    /// Guidance applied to requests that carry no `guidance` field, as NAME=WEIGHT,... over the
    /// configured reward models (α_i = weight / --default-beta). Empty: such requests are
    /// unguided (plain base-model sampling).
    #[arg(long, env = "GENARM_DEFAULT_GUIDANCE", value_name = "NAME=W,...", value_parser = parse_guidance)]
    pub default_guidance: Option<DefaultGuidance>,

    /// β used with --default-guidance (α_i = weight / β); must be > 0.
    #[arg(long, env = "GENARM_DEFAULT_BETA", value_name = "BETA", default_value_t = 1.0)]
    pub default_beta: f32,

    /// Most sequences decoded together in one step (continuous batching).
    #[arg(long, env = "GENARM_MAX_BATCH_SIZE", value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: u32,

    /// Token budget of each worker's Step call: the running streams' next tokens come first
    /// (never delayed), then prompts in arrival order, a prompt longer than what is left being
    /// prefilled in chunks over several steps (at least budget/8 tokens a step, however many
    /// streams run). Smaller keeps the streams' inter-token latency steady while long prompts
    /// arrive; larger starts those prompts sooner. New requests join the batch while the prompt
    /// tokens still to send are under the budget.
    #[arg(long, env = "GENARM_MAX_BATCH_TOKENS", value_name = "TOKENS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,

    /// Most requests waiting for a place in the batch; when the queue is full new requests get
    /// HTTP 429 at once.
    #[arg(long, env = "GENARM_MAX_WAITING", value_name = "N", default_value_t = 256)]
    pub max_waiting: usize,

    /// Worker restart grace period: when a model slot (the base or a reward name) loses its last
    /// ready worker, the running requests that use it are not failed at once: they get no steps
    /// (other requests keep running) until a worker for that slot is ready again (the same URL
    /// restarted, or a newcomer via etcd); then their sequences are replayed from position 0 and
    /// they continue with identical output. Past the grace period they fail with HTTP 503
    /// naming the worker. New requests needing a slot with no ready worker get HTTP 503 at once
    /// (they are not queued). 0 fails running requests at once too.
    #[arg(long, env = "GENARM_WORKER_RESTART_GRACE_SECS", value_name = "SECS", default_value_t = 30)]
    pub worker_restart_grace_secs: u64,

    /// Largest accepted request body in bytes (larger bodies get HTTP 413).
    #[arg(long, env = "GENARM_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Element type workers use to send logits: f32 is exact; bf16 and f16 halve the bytes on
    /// the wire at the cost of rounding, which changes outputs: on SmolLM2-135M, greedy 64-token
    /// completions matched f32 in 28% (bf16) and 77% (f16) of cases unguided, 59% and 91%
    /// guided (docs/benchmarks.md). Use f16 only where the network, not the forward, limits a
    /// step. The sparse wire (`--logits-wire sparse`) is always exact: its certificates and the
    /// rows it fetches are f32, whatever this flag says.
    #[arg(long, env = "GENARM_LOGITS_DTYPE", value_name = "DTYPE", value_enum, default_value_t = LogitsDtypeArg::F32)]
    pub logits_dtype: LogitsDtypeArg,

    /// What workers send per sequence and step. `sparse` (the default): a certificate of the
    /// row (its best `--sparse-candidates` logits, its normalizer and bounds on the rest) from
    /// which the router proves its token is exactly the full row's; when it cannot (or for
    /// negative weights, `logprobs` and `top_logprobs`), it fetches that sequence's full rows, so
    /// outputs are identical either way (docs/architecture.md §3.4). It needs workers that list
    /// the sparse wire in their Info (every genarm worker does). `full`: the whole logit row
    /// every step (vocabulary × the dtype's bytes), slower in every measured cell
    /// (docs/benchmarks.md, production shape).
    #[arg(long, env = "GENARM_LOGITS_WIRE", value_name = "WIRE", value_enum, default_value_t = LogitsWireArg::Sparse)]
    pub logits_wire: LogitsWireArg,

    /// Candidates per sequence and model on the sparse wire (more: fewer full-row fetches, more
    /// bytes and certificate work per step). 256 beat 64 in most cells of the production-shape
    /// benchmark (median 1.08× the tokens/s, at most 5% slower where 64 already certified nearly
    /// every token; docs/benchmarks.md).
    #[arg(long, env = "GENARM_SPARSE_CANDIDATES", value_name = "N", default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub sparse_candidates: u32,

    /// Candidates of a refined certificate on the sparse wire: when a step's certificates are
    /// too loose to prove a sequence's token (a nucleus longer than `--sparse-candidates`, or
    /// models whose candidates disagree), the router first asks its workers for deeper
    /// certificates with this many candidates plus each model's exact values at the others'
    /// candidates, and fetches whole rows only if those still cannot prove it. 0 fetches whole
    /// rows at once.
    #[arg(long, env = "GENARM_SPARSE_REFINE_CANDIDATES", value_name = "N", default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub sparse_refine_candidates: u32,

    /// Threads that fuse, sample and detokenize each step's sequences, in parallel and off the
    /// async runtime (0: one per available core).
    #[arg(long, env = "GENARM_SAMPLING_THREADS", value_name = "N", default_value_t = 0)]
    pub sampling_threads: usize,

    /// Most stop strings one request may give.
    #[arg(long, env = "GENARM_MAX_STOP_SEQUENCES", value_name = "N", default_value_t = 4)]
    pub max_stop_sequences: usize,

    /// Longest stop string, in bytes (longer ones get HTTP 400 naming this flag).
    #[arg(long, env = "GENARM_MAX_STOP_LENGTH", value_name = "BYTES", default_value_t = 1024)]
    pub max_stop_length: usize,

    /// Longest prompt, in tokens (after the chat template), of any model a request uses; longer
    /// prompts get HTTP 400 naming this flag. Default: no limit beyond the model's context.
    #[arg(long, env = "GENARM_MAX_PROMPT_TOKENS", value_name = "TOKENS")]
    pub max_prompt_tokens: Option<u32>,

    /// Largest `max_tokens` (`max_completion_tokens`) a request may ask for; larger values get
    /// HTTP 400 naming this flag, and requests that give none are capped to it. Default: no
    /// limit beyond the model's context.
    #[arg(long, env = "GENARM_MAX_TOKENS_LIMIT", value_name = "TOKENS")]
    pub max_tokens_limit: Option<u32>,

    /// Memory budget, in MiB, for rendering one chat template. Templates come with the models
    /// (their tokenizer_config.json or GGUF metadata) and the template engine does not bound the
    /// size of intermediate strings, so a hostile or broken template could exhaust the router's
    /// memory; each render therefore runs in a child process (the router re-executed) limited to
    /// this much address space. A template that exceeds it fails that request with an error
    /// naming the budget, and the router keeps serving. 0 renders in the router's own process
    /// without a bound (only for trusted templates).
    #[arg(long, env = "GENARM_CHAT_TEMPLATE_MEMORY_MIB", value_name = "MIB", default_value_t = 1024)]
    pub chat_template_memory_mib: u64,

    /// Whole-request timeout in seconds, from arrival to the last token (streams included): a
    /// request still running then fails with HTTP 504 (or a final error event on a stream) and
    /// its sequences are released on every worker. 0 disables it.
    #[arg(long, env = "GENARM_REQUEST_TIMEOUT_SECS", value_name = "SECS", default_value_t = 600)]
    pub request_timeout_secs: u64,

    /// Per-step watchdog: a worker that does not answer a `Step` call within this many seconds
    /// is treated as failed (marked not ready, its sequences failed over to a ready replica by
    /// replay, or held for --worker-restart-grace-secs, else failed with HTTP 503 naming the
    /// worker). One step is one forward of the batch (decode, or a prefill of the new prompts):
    /// milliseconds to seconds on a GPU. Raise it when large models are served on CPU, where a
    /// long prefill can take minutes.
    #[arg(long, env = "GENARM_STEP_TIMEOUT_SECS", value_name = "SECS", default_value_t = 60)]
    pub step_timeout_secs: u64,

    /// An API key clients must send as `Authorization: Bearer <KEY>`. Repeat the flag for
    /// several keys (the env variable takes a comma-separated list). With no key (here or in
    /// --api-key-file) the API is open. `/health` and `/ready` never need a key. Keys are never
    /// logged; in metrics and limits a key given here is labelled `key-<N>` (N = its position).
    #[arg(
        long = "api-key",
        env = "GENARM_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<ApiKey>,

    /// A file of API keys, one per line, as `KEY` or `NAME:KEY` (NAME labels the key in metrics
    /// and per-key limits; keys sharing a NAME share its limits). Blank lines and lines
    /// starting with `#` are ignored. Re-read on SIGHUP; a file that cannot be read or parsed
    /// then keeps the old keys (and the router logs why).
    #[arg(long, env = "GENARM_API_KEY_FILE", value_name = "PATH")]
    pub api_key_file: Option<std::path::PathBuf>,

    /// Also require an API key for `GET /metrics` (by default it is open, like `/health`).
    #[arg(long, env = "GENARM_PROTECT_METRICS")]
    pub protect_metrics: bool,

    /// Most requests one API key (one key label) may have in flight at once (streams count until
    /// they end); more get HTTP 429 with `Retry-After`. Applies only when keys are configured.
    /// 0 disables the limit.
    #[arg(long, env = "GENARM_KEY_MAX_CONCURRENT", value_name = "N", default_value_t = 256)]
    pub key_max_concurrent: u32,

    /// Token budget per API key (key label) per minute, charged at admission as prompt tokens +
    /// max_tokens (a token bucket refilled continuously, holding at most one minute's budget);
    /// a request the bucket cannot pay gets HTTP 429 with `Retry-After`. Applies only when keys
    /// are configured. 0 (the default) disables the limit.
    #[arg(long, env = "GENARM_KEY_TOKENS_PER_MINUTE", value_name = "TOKENS", default_value_t = 0)]
    pub key_tokens_per_minute: u64,

    /// How long to wait at startup for every worker to answer `Info` (workers may still be
    /// loading their models); the router retries until then and exits with an error after.
    /// Applies to --base/--rm URLs; with --etcd the router waits for registrations indefinitely
    /// (not ready meanwhile).
    #[arg(long, env = "GENARM_WORKER_CONNECT_TIMEOUT_SECS", value_name = "SECS", default_value_t = 600)]
    pub worker_connect_timeout_secs: u64,

    /// Timeout of one control call to a worker (health checks, `Info`, `Release`). `Step` calls
    /// have their own deadline, --step-timeout-secs.
    #[arg(long, env = "GENARM_WORKER_TIMEOUT_SECS", value_name = "SECS", default_value_t = 300)]
    pub worker_timeout_secs: u64,

    /// How often a worker marked not ready is probed again, in milliseconds.
    #[arg(long, env = "GENARM_WORKER_REPROBE_MS", value_name = "MS", default_value_t = 1000)]
    pub worker_reprobe_ms: u64,

    /// Largest gRPC message accepted from or sent to a worker, in bytes.
    #[arg(long, env = "GENARM_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// On SIGTERM/SIGINT the router drains: new requests get 503 with `Retry-After`, `/ready`
    /// answers 503 (`/health` stays 200), and in-flight requests get this many seconds to finish
    /// before they are cancelled (and their KV released on every worker). Default 10.
    #[arg(long, env = "GENARM_SHUTDOWN_TIMEOUT", value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,

    /// Older name of --shutdown-timeout (used when --shutdown-timeout is not given).
    #[arg(long, env = "GENARM_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
}

/// One `--api-key`: a secret whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Checked in `Args::validate`, whose messages never repeat the key.
        Ok(ApiKey(s.trim().to_string()))
    }
}

/// One `--rm NAME=URL` (or `--rm NAME` with --etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardWorker {
    /// The reward name requests use.
    pub name: String,
    /// The worker's gRPC URL (`None`: found through etcd).
    pub url: Option<String>,
}

/// `--default-guidance`: reward weights applied when a request has no `guidance`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DefaultGuidance {
    /// (reward name, weight) pairs in the order given.
    pub weights: Vec<(String, f32)>,
}

/// `--logits-dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogitsDtypeArg {
    /// 4 bytes per logit, exact.
    F32,
    /// bfloat16: 2 bytes per logit.
    Bf16,
    /// IEEE half: 2 bytes per logit.
    F16,
}

/// `--logits-wire`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogitsWireArg {
    /// Whole logit rows every step.
    Full,
    /// Certificates of the rows; whole rows only when the token cannot be certified.
    Sparse,
}

/// Whether `name` is usable as a reward name (it appears in JSON keys and metric labels).
pub fn valid_reward_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_rm(s: &str) -> Result<RewardWorker, String> {
    let (name, url) = match s.split_once('=') {
        Some((n, u)) => (n.trim(), Some(u.trim())),
        None => (s.trim(), None),
    };
    if !valid_reward_name(name) {
        return Err(format!(
            "reward name `{name}` must be non-empty and use only letters, digits, `_`, `-`, `.`"
        ));
    }
    if let Some(url) = url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("worker URL `{url}` for `{name}` must start with http:// or https://"));
        }
    }
    Ok(RewardWorker { name: name.to_string(), url: url.map(str::to_string) })
}

fn parse_guidance(s: &str) -> Result<DefaultGuidance, String> {
    let mut weights = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not NAME=WEIGHT (example: helpful=1.0,harmless=0.5)"))?;
        let w: f32 = w.trim().parse().map_err(|_| format!("weight `{w}` of `{name}` is not a number"))?;
        if !w.is_finite() {
            return Err(format!("weight of `{name}` must be finite, got {w}"));
        }
        weights.push((name.trim().to_string(), w));
    }
    Ok(DefaultGuidance { weights })
}

impl Args {
    /// The drain timeout: `--shutdown-timeout`, else `--shutdown-grace-secs`, else 10 s.
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_timeout.or(self.shutdown_grace_secs).unwrap_or(10))
    }

    /// Checks what clap cannot: distinct reward names, a sane β, default guidance over known
    /// reward names, a non-zero queue.
    pub fn validate(&self) -> Result<(), String> {
        // A repeated name with different URLs gives replicas of that reward model.
        let mut given: Vec<(&str, Option<&str>)> =
            self.rms.iter().map(|r| (r.name.as_str(), r.url.as_deref())).collect();
        given.sort_unstable();
        if let Some(w) = given.windows(2).find(|w| w[0] == w[1]) {
            return Err(match w[0].1 {
                Some(url) => format!(
                    "--rm {}={url} is given twice; give each replica's URL once (repeat --rm NAME=URL \
                     with different URLs for replicas)",
                    w[0].0
                ),
                None => format!("--rm {} is given twice", w[0].0),
            });
        }
        let mut names: Vec<&str> = self.rms.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if !(self.default_beta.is_finite() && self.default_beta > 0.0) {
            return Err(format!("--default-beta must be a finite number > 0, got {}", self.default_beta));
        }
        if let Some(g) = &self.default_guidance {
            for (name, _) in &g.weights {
                if !names.contains(&name.as_str()) {
                    return Err(format!(
                        "--default-guidance names reward model `{name}`, which is not configured; configured \
                         with --rm: [{}]",
                        names.join(", ")
                    ));
                }
            }
        }
        if self.max_waiting == 0 {
            return Err("--max-waiting must be at least 1".into());
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            crate::api::auth::check_key_text(&k.0).map_err(|why| {
                format!("--api-key #{} (or entry #{} of GENARM_API_KEYS) {why}", i + 1, i + 1)
            })?;
        }
        if self.step_timeout_secs == 0 {
            return Err("--step-timeout-secs must be at least 1".into());
        }
        if let Some(base) = &self.base {
            if !base.starts_with("http://") && !base.starts_with("https://") {
                return Err(format!("--base `{base}` must be a URL starting with http:// or https://"));
            }
        }
        if self.etcd.is_none() {
            if self.base.is_none() {
                return Err("--base URL is required (or --etcd URLS to discover the workers)".into());
            }
            if let Some(r) = self.rms.iter().find(|r| r.url.is_none()) {
                return Err(format!(
                    "--rm {} has no URL: give NAME=URL (example: {}=http://127.0.0.1:50052), or --etcd \
                     URLS to discover its workers",
                    r.name, r.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("genarm-router").chain(args.iter().copied()))
    }

    #[test]
    fn every_flag_has_a_genarm_env_var_and_help() {
        use clap::CommandFactory;
        let cmd = Args::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg.get_env().unwrap_or_else(|| panic!("--{id} has no env var"));
            assert!(env.to_str().unwrap().starts_with("GENARM_"), "--{id}: {env:?}");
            assert!(arg.get_help().is_some(), "--{id} has no help");
        }
    }

    #[test]
    fn defaults() {
        let a = parse(&["--base", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(a.max_batch_size, 32);
        assert_eq!(a.max_batch_tokens, 4096);
        assert_eq!(a.max_waiting, 256);
        assert_eq!(a.worker_restart_grace_secs, 30);
        assert_eq!(a.max_body_bytes, 4 << 20);
        assert_eq!(a.logits_dtype, LogitsDtypeArg::F32);
        assert!(a.rms.is_empty());
        a.validate().unwrap();
    }

    #[test]
    fn api_keys_and_limits_parse_and_keys_are_never_shown() {
        let a = parse(&["--base", "http://h:1"]).unwrap();
        assert!(a.api_keys.is_empty() && a.api_key_file.is_none() && !a.protect_metrics);
        assert_eq!((a.key_max_concurrent, a.key_tokens_per_minute), (256, 0));
        assert_eq!((a.max_stop_length, a.request_timeout_secs), (1024, 600));
        assert_eq!((a.max_prompt_tokens, a.max_tokens_limit, a.step_timeout_secs), (None, None, 60));
        let a = parse(&[
            "--base",
            "http://h:1",
            "--api-key",
            "sk-one,sk-two",
            "--api-key",
            "sk-three",
            "--step-timeout-secs",
            "5",
        ])
        .unwrap();
        let keys: Vec<&str> = a.api_keys.iter().map(|k| k.0.as_str()).collect();
        assert_eq!(keys, ["sk-one", "sk-two", "sk-three"]);
        a.validate().unwrap();
        assert!(!format!("{a:?}").contains("sk-"), "Debug shows a key");
        let a = parse(&["--base", "http://h:1", "--api-key", "sk-a", "--api-key", "sk b"]).unwrap();
        let e = a.validate().unwrap_err();
        assert!(e.contains("#2") && !e.contains("sk b"), "{e}");
        let a = parse(&["--base", "http://h:1", "--step-timeout-secs", "0"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--step-timeout-secs"));
    }

    #[test]
    fn shutdown_timeout_and_its_older_name() {
        let t = |extra: &[&str]| {
            let mut v = vec!["--base", "http://h:1"];
            v.extend_from_slice(extra);
            parse(&v).unwrap().shutdown_timeout().as_secs()
        };
        assert_eq!(t(&[]), 10);
        assert_eq!(t(&["--shutdown-timeout", "3"]), 3);
        assert_eq!(t(&["--shutdown-grace-secs", "4"]), 4);
        assert_eq!(t(&["--shutdown-timeout", "3", "--shutdown-grace-secs", "4"]), 3);
    }

    #[test]
    fn reward_workers_and_guidance() {
        let a = parse(&[
            "--base",
            "http://h:1",
            "--rm",
            "helpful=http://h:2",
            "--rm",
            "harmless=http://h:3",
            "--default-guidance",
            "helpful=1.0, harmless=0.5",
            "--default-beta",
            "2",
        ])
        .unwrap();
        assert_eq!(a.rms[1], RewardWorker { name: "harmless".into(), url: Some("http://h:3".into()) });
        assert_eq!(a.default_guidance.as_ref().unwrap().weights[1], ("harmless".into(), 0.5));
        a.validate().unwrap();
    }

    #[test]
    fn bad_flags_are_refused_with_reasons() {
        let a = parse(&["--base", "http://h:1", "--rm", "nourl"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--etcd"));
        assert!(parse(&["--rm", "a"]).is_err(), "--base or --etcd is required");
        let a = parse(&["--etcd", "http://e:2379", "--rm", "a", "--cluster", "c"]).unwrap();
        a.validate().unwrap();
        assert_eq!(a.rms[0].url, None);
        assert!(parse(&["--base", "http://h:1", "--rm", "a=ftp://x"]).is_err());
        assert!(parse(&["--base", "http://h:1", "--default-guidance", "a=x"]).is_err());
        let a = parse(&["--base", "http://h:1", "--rm", "a=http://h:2", "--rm", "a=http://h:3"]).unwrap();
        a.validate().expect("replicas of one reward model");
        let a = parse(&["--base", "http://h:1", "--rm", "a=http://h:2", "--rm", "a=http://h:2"]).unwrap();
        assert!(a.validate().unwrap_err().contains("twice"));
        let a = parse(&["--base", "http://h:1", "--default-guidance", "zz=1"]).unwrap();
        assert!(a.validate().unwrap_err().contains("zz"));
        let a = parse(&["--base", "http://h:1", "--default-beta", "0"]).unwrap();
        assert!(a.validate().unwrap_err().contains("beta"));
        assert!(parse(&["--base", "http://h:1", "--max-batch-size", "0"]).is_err());
    }
}
