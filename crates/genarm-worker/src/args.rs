//! The command-line flags both worker binaries share ([`WorkerArgs`], flattened into each
//! binary's parser); every flag also reads a `GENARM_*` environment variable.

use std::path::PathBuf;

use candle_core::DType;
use clap::{Args, ValueEnum};
use genarm_model::engine::DeviceSpec;

/// Default gRPC message size limit: 256 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Flags shared by `genarm-base-worker` and `genarm-rm-worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The model to serve: a Hugging Face model directory (config.json, *.safetensors,
    /// tokenizer.json), a .gguf file, or a PEFT LoRA adapter directory (adapter_config.json)
    /// whose base_model_name_or_path is a local backbone path.
    #[arg(long, env = "GENARM_MODEL", value_name = "PATH")]
    pub model: PathBuf,

    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) merged
    /// into --model's weights at load time; the model is then served under the adapter
    /// directory's name. Use it when the adapter's base_model_name_or_path is a hub id.
    #[arg(long, env = "GENARM_LORA", value_name = "DIR")]
    pub lora: Option<PathBuf>,

    /// Address to serve gRPC on, as host:port (port 0 picks a free port; the bound address is
    /// printed on stdout as `GENARM_LISTENING grpc <ip:port>`).
    #[arg(long, env = "GENARM_LISTEN", value_name = "HOST:PORT")]
    pub listen: String,

    /// Tensor-parallel degree: the number of ranks the model is split over (CPU threads, or
    /// consecutive CUDA devices). Must divide the model's attention and KV head counts.
    #[arg(long, env = "GENARM_TP", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub tp: u32,

    /// Device to run on: `cpu`, `cuda` (device 0) or `cuda:N` (ranks on devices N, N+1, ...).
    /// CUDA needs a binary built with `--features cuda`.
    #[arg(long, env = "GENARM_DEVICE", default_value = "cpu", value_name = "DEVICE",
          value_parser = parse_device)]
    pub device: DeviceSpec,

    /// Weights and KV cache dtype (logits are always computed and returned from f32).
    #[arg(long, env = "GENARM_DTYPE", value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,

    /// KV cache pool size in tokens, shared by all sequences and preallocated at startup
    /// (rounded up to whole blocks). When it is full, steps answer KV_EXHAUSTED.
    #[arg(long, env = "GENARM_KV_CAPACITY_TOKENS", default_value_t = 4096, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_capacity_tokens: u64,

    /// Tokens per KV cache block (the unit of allocation).
    #[arg(long, env = "GENARM_KV_BLOCK_SIZE", default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub kv_block_size: u32,

    /// Turn the prefix cache off. With it on (the default), full KV blocks stay cached after
    /// their sequences leave, and a new sequence (or an aligned prefill chunk) whose tokens
    /// from position 0 match reuses them instead of computing them again; each hit is checked
    /// token for token. Cached blocks no sequence holds count as free: the pool evicts them
    /// (least recently used first) before any request waits.
    #[arg(long, env = "GENARM_NO_PREFIX_CACHE", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub no_prefix_cache: bool,

    /// Largest gRPC message the worker sends or accepts, in bytes. A step's response holds
    /// every sequence's logits (vocab × 4 bytes each in f32), so raise it for big batches over
    /// big vocabularies.
    #[arg(long, env = "GENARM_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
          value_name = "BYTES")]
    pub max_message_bytes: usize,

    /// Address to serve Prometheus metrics on (HTTP `GET /metrics`), as host:port (port 0 picks
    /// a free port; the bound address is printed on stdout as `GENARM_LISTENING metrics
    /// <ip:port>`, after the gRPC line). No metrics server without it.
    #[arg(long, env = "GENARM_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,

    /// On SIGTERM/SIGINT the worker drains: it deregisters from etcd, reports NOT_SERVING,
    /// refuses new connections, and gives in-flight calls (Step, Release) this many seconds to
    /// finish before it exits.
    #[arg(long, env = "GENARM_SHUTDOWN_TIMEOUT", value_name = "SECS", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Release a sequence no `Step` has reached for this many seconds: a router that stopped or
    /// restarted leaves its sequences' KV cache behind. A background sweep frees them, logs
    /// them and counts them (`Stats.orphans_released`, `genarm_worker_orphans_released_total`).
    /// Keep it well above the router's step interval and --worker-restart-grace-secs; 0 never
    /// releases.
    #[arg(long, env = "GENARM_ORPHAN_TIMEOUT_SECS", value_name = "SECS", default_value_t = 300)]
    pub orphan_timeout_secs: u64,

    /// etcd registration (`--etcd`, `--cluster`, `--advertise`, `--lease-ttl-secs`).
    #[command(flatten)]
    pub discovery: crate::discovery::DiscoveryArgs,

    /// Mutual TLS (`--tls-cert`, `--tls-key`, `--tls-ca`, `--plaintext-health-listen`).
    #[command(flatten)]
    pub tls: genarm_tls::WorkerTlsArgs,
}

/// The `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// 32-bit float (exact reference numerics).
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl DtypeArg {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F16 => DType::F16,
        }
    }

    /// The name reported in `Info.dtype` (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            DtypeArg::F32 => "f32",
            DtypeArg::Bf16 => "bf16",
            DtypeArg::F16 => "f16",
        }
    }
}

/// Parses `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let s = s.trim();
    match s {
        "cpu" => return Ok(DeviceSpec::Cpu),
        "cuda" => return Ok(DeviceSpec::Cuda(0)),
        _ => {}
    }
    if let Some(n) = s.strip_prefix("cuda:") {
        return n
            .parse::<usize>()
            .map(DeviceSpec::Cuda)
            .map_err(|_| format!("{s:?}: the CUDA device index must be a number, as in cuda:0"));
    }
    Err(format!("unknown device {s:?}: use cpu, cuda or cuda:N"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse_device("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert!(parse_device("cuda:x").unwrap_err().contains("cuda:0"));
        assert!(parse_device("tpu").unwrap_err().contains("cpu, cuda or cuda:N"));
    }

    #[test]
    fn defaults_and_flags() {
        let cli = Cli::try_parse_from(["w", "--model", "m", "--listen", "127.0.0.1:0"]).unwrap();
        let a = cli.worker;
        assert_eq!(a.tp, 1);
        assert_eq!(a.device, DeviceSpec::Cpu);
        assert_eq!(a.dtype, DtypeArg::F32);
        assert_eq!(a.kv_capacity_tokens, 4096);
        assert_eq!(a.kv_block_size, 16);
        assert_eq!(a.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(a.metrics_listen, None);
        assert_eq!(a.shutdown_timeout, 10);
        assert_eq!(a.orphan_timeout_secs, 300);
        let cli = Cli::try_parse_from([
            "w", "--model", "m", "--listen", "[::1]:9", "--tp", "2", "--device", "cuda:1", "--dtype", "bf16",
        ])
        .unwrap();
        assert_eq!(cli.worker.tp, 2);
        assert_eq!(cli.worker.device, DeviceSpec::Cuda(1));
        assert_eq!(cli.worker.dtype.dtype(), DType::BF16);
        assert!(Cli::try_parse_from(["w", "--model", "m", "--listen", "x", "--tp", "0"]).is_err());
        assert!(Cli::try_parse_from(["w", "--model", "m", "--listen", "x", "--kv-block-size", "0"]).is_err());
    }
}
