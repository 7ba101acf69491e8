//! [`WorkerConfig`]: a worker's validated settings, built from its flags and its role.

use std::path::PathBuf;

use genarm_model::engine::DeviceSpec;
use genarm_model::EngineOptions;

use crate::args::{DtypeArg, WorkerArgs};
use crate::error::WorkerError;
use crate::role::{validate_reward_name, WorkerRole};

/// Everything a worker process needs to load its model and serve it.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The model directory or `.gguf` file.
    pub model: PathBuf,
    /// A LoRA adapter directory merged into `model` (`--lora`).
    pub lora: Option<PathBuf>,
    /// Where to listen, as `host:port`.
    pub listen: String,
    /// How the engine loads and runs the model.
    pub engine: EngineOptions,
    /// The `--dtype` flag (its name is reported in `Info`).
    pub dtype: DtypeArg,
    /// gRPC message size limit, both directions.
    pub max_message_bytes: usize,
    /// Where to serve Prometheus metrics (`--metrics-listen`), if anywhere.
    pub metrics_listen: Option<String>,
    /// Base or a named reward model.
    pub role: WorkerRole,
    /// etcd registration settings.
    pub discovery: crate::discovery::DiscoveryArgs,
    /// Mutual TLS flags (checked and read when serving starts).
    pub tls: genarm_tls::WorkerTlsArgs,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT (`--shutdown-timeout`).
    pub shutdown_timeout: std::time::Duration,
    /// Idle time after which a sequence is released as orphaned (`--orphan-timeout-secs`);
    /// `None` never releases.
    pub orphan_timeout: Option<std::time::Duration>,
}

impl WorkerConfig {
    /// Validates `args` for `role`: CUDA only when built with the `cuda` feature, a usable
    /// reward name, sizes that fit this platform.
    pub fn new(args: WorkerArgs, role: WorkerRole) -> Result<Self, WorkerError> {
        if let WorkerRole::Reward { name } = &role {
            validate_reward_name(name).map_err(WorkerError::Config)?;
        }
        if matches!(args.device, DeviceSpec::Cuda(_)) && !cfg!(feature = "cuda") {
            return Err(WorkerError::Config(
                "--device cuda: this binary was built without CUDA support; rebuild it with \
                 `cargo build --release --features cuda` on a machine with the CUDA toolkit, or use --device cpu"
                    .into(),
            ));
        }
        let kv_capacity_tokens = usize::try_from(args.kv_capacity_tokens).map_err(|_| {
            WorkerError::Config(format!(
                "--kv-capacity-tokens {} does not fit this platform's address space",
                args.kv_capacity_tokens
            ))
        })?;
        if args.max_message_bytes < 1024 {
            return Err(WorkerError::Config(format!(
                "--max-message-bytes {} is too small to carry any step; the default is {}",
                args.max_message_bytes,
                crate::args::DEFAULT_MAX_MESSAGE_BYTES
            )));
        }
        Ok(Self {
            model: args.model,
            lora: args.lora,
            listen: args.listen,
            engine: EngineOptions {
                device: args.device,
                dtype: args.dtype.dtype(),
                tp: args.tp as usize,
                kv_capacity_tokens,
                block_size: args.kv_block_size as usize,
                prefix_cache: !args.no_prefix_cache,
                ..Default::default()
            },
            dtype: args.dtype,
            max_message_bytes: args.max_message_bytes,
            metrics_listen: args.metrics_listen,
            role,
            discovery: args.discovery,
            tls: args.tls,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
            orphan_timeout: (args.orphan_timeout_secs > 0)
                .then(|| std::time::Duration::from_secs(args.orphan_timeout_secs)),
        })
    }

    /// KV pool capacity in tokens as the engine allocates it (rounded up to whole blocks).
    pub fn kv_capacity_rounded(&self) -> usize {
        self.engine.kv_capacity_tokens.div_ceil(self.engine.block_size) * self.engine.block_size
    }
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

    fn args(extra: &[&str]) -> WorkerArgs {
        let mut argv = vec!["w", "--model", "m", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().worker
    }

    #[test]
    fn builds_engine_options() {
        let c = WorkerConfig::new(
            args(&["--kv-capacity-tokens", "100", "--kv-block-size", "16"]),
            WorkerRole::Base,
        )
        .unwrap();
        assert_eq!(c.engine.kv_capacity_tokens, 100);
        assert_eq!(c.kv_capacity_rounded(), 112);
        assert_eq!(c.engine.tp, 1);
    }

    #[test]
    fn orphan_timeout_zero_disables_the_sweep() {
        let c = WorkerConfig::new(args(&[]), WorkerRole::Base).unwrap();
        assert_eq!(c.orphan_timeout, Some(std::time::Duration::from_secs(300)));
        let c = WorkerConfig::new(args(&["--orphan-timeout-secs", "2"]), WorkerRole::Base).unwrap();
        assert_eq!(c.orphan_timeout, Some(std::time::Duration::from_secs(2)));
        let c = WorkerConfig::new(args(&["--orphan-timeout-secs", "0"]), WorkerRole::Base).unwrap();
        assert_eq!(c.orphan_timeout, None);
    }

    #[test]
    fn refuses_bad_names_and_cuda_without_the_feature() {
        let e = WorkerConfig::new(args(&[]), WorkerRole::Reward { name: "a b".into() }).unwrap_err();
        assert!(e.to_string().contains("reward name"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = WorkerConfig::new(args(&["--device", "cuda"]), WorkerRole::Base).unwrap_err();
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
    }
}
