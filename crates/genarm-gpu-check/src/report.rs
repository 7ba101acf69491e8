//! The check's results: records serialized to the JSON file, and the plain-text table printed last.

use std::fmt::Write as _;

use serde::Serialize;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Ran and met its bound.
    Pass,
    /// Ran and missed its bound, or failed to run.
    Fail,
    /// Not run (missing input, or not applicable here); the note says why.
    Skip,
}

impl Status {
    /// Upper-case label for the table.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// What the check ran on.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeviceInfo {
    /// `cuda`, or `cpu` for a `--cpu-dry-run`.
    pub kind: String,
    /// CUDA device ordinal.
    pub ordinal: usize,
    /// Device name (`NVIDIA H200`, or the CPU model).
    pub name: String,
    /// Compute capability, as `9.0`.
    pub compute_capability: Option<String>,
    /// Device memory.
    pub total_memory_bytes: Option<u64>,
    /// Number of CUDA devices visible.
    pub device_count: Option<usize>,
    /// Driver release (from /proc or run.sh) and the CUDA version it supports.
    pub driver: Option<String>,
    /// NCCL library version.
    pub nccl: Option<String>,
    /// The bundle's commit, as run.sh exports it.
    pub bundle_commit: Option<String>,
}

/// Logits of one model in one dtype against its CPU (transformers, f32) golden.
#[derive(Debug, Clone, Serialize)]
pub struct LogitsCheck {
    /// Golden name (`llama-mha`, `smollm2-135m-instruct`, ...), with ` tp=N` when sharded.
    pub model: String,
    /// Engine dtype.
    pub dtype: String,
    /// Outcome.
    pub status: Status,
    /// Bound on `rel_l2` (none when the check did not get to compare).
    pub tolerance: Option<f64>,
    /// ‖ours − golden‖₂ / ‖golden‖₂ over every compared logit (full forward, all positions,
    /// plus the cached path's last rows).
    pub rel_l2: Option<f64>,
    /// max |ours − golden| / max |golden|.
    pub rel_max: Option<f64>,
    /// max |ours − golden|.
    pub max_abs: Option<f64>,
    /// Prompts whose last-position argmax matches the golden's (full forward).
    pub argmax_agree: Option<usize>,
    /// Prompts compared.
    pub prompts: usize,
    /// Logits compared.
    pub values: usize,
    /// Wall time of load and forwards.
    pub seconds: f64,
    /// Why it failed or was skipped.
    pub note: Option<String>,
}

/// Collective operations on one device.
#[derive(Debug, Clone, Serialize)]
pub struct CollectiveCheck {
    /// What ran (`nccl world=1: all_reduce, all_gather, broadcast (f32, bf16)`).
    pub what: String,
    /// Outcome.
    pub status: Status,
    /// Details or the error.
    pub note: Option<String>,
}

/// Measured device-to-device copy bandwidth.
#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    /// Size of one copy.
    pub bytes: u64,
    /// Copies timed.
    pub iterations: usize,
    /// Bytes read plus bytes written per second.
    pub bytes_per_s: f64,
}

/// The random model the decode benchmark runs.
#[derive(Debug, Clone, Serialize)]
pub struct BenchModel {
    /// Shape, as `layers=16 hidden=2048 ...`.
    pub shape: String,
    /// Parameter count (tied embeddings counted once).
    pub params: u64,
    /// Weight bytes in the bench dtype: what every decode step must read at least once.
    pub weight_bytes: u64,
    /// Bench dtype.
    pub dtype: String,
    /// Wall time of generating and loading it.
    pub load_seconds: f64,
}

/// Decode throughput at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeRow {
    /// Sequences decoded together.
    pub batch: usize,
    /// Prompt tokens each sequence was prefilled with.
    pub prompt_tokens: usize,
    /// Timed decode steps (after warm-up).
    pub steps: usize,
    /// Outcome (`skip` when the time budget ran out).
    pub status: Status,
    /// Mean wall time of one step (one token for each of `batch` sequences, logits to the host).
    pub ms_per_step: Option<f64>,
    /// `batch / step time`.
    pub tokens_per_s: Option<f64>,
    /// HBM floor: weight bytes / measured copy bandwidth, the least time a step can take.
    pub floor_ms_per_step: Option<f64>,
    /// `batch / floor`: the throughput a bandwidth-bound step would reach.
    pub ceiling_tokens_per_s: Option<f64>,
    /// `floor / step time`, in percent.
    pub pct_of_floor: Option<f64>,
    /// Why it failed or was skipped.
    pub note: Option<String>,
}

/// Memory used on the device.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// How it was measured.
    pub method: String,
    /// In use when the check started (other processes and the CUDA context).
    pub baseline_bytes: Option<u64>,
    /// Highest use seen.
    pub peak_bytes: Option<u64>,
}

/// Everything the check found; written as JSON with `--out`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `genarm-gpu-check <version>`.
    pub tool: String,
    /// Overall outcome: `fail` when any check failed, else `pass`.
    pub status: Status,
    /// Seconds since the Unix epoch at start.
    pub started_unix: u64,
    /// Wall time of the whole check.
    pub duration_s: f64,
    /// The device.
    pub device: DeviceInfo,
    /// Logits against the goldens.
    pub logits: Vec<LogitsCheck>,
    /// Collectives.
    pub collectives: Vec<CollectiveCheck>,
    /// Copy bandwidth, when measured.
    pub bandwidth: Option<Bandwidth>,
    /// The decode benchmark's model, when it loaded.
    pub bench_model: Option<BenchModel>,
    /// Decode throughput per batch size.
    pub decode: Vec<DecodeRow>,
    /// Memory use.
    pub memory: Memory,
    /// Errors of steps that could not run at all.
    pub errors: Vec<String>,
}

impl Report {
    /// `Fail` when anything failed, else `Pass`.
    pub fn overall(&self) -> Status {
        let failed = !self.errors.is_empty()
            || self.logits.iter().any(|c| c.status == Status::Fail)
            || self.collectives.iter().any(|c| c.status == Status::Fail)
            || self.decode.iter().any(|d| d.status == Status::Fail);
        if failed {
            Status::Fail
        } else {
            Status::Pass
        }
    }

    /// The summary table (plain text, also valid as a fenced block in docs/gpu.md).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let d = &self.device;
        let _ = writeln!(
            s,
            "genarm-gpu-check: {} device {} {} (cc {}, {}, {} devices), driver {}, NCCL {}, bundle {}",
            d.kind,
            d.ordinal,
            d.name,
            d.compute_capability.as_deref().unwrap_or("-"),
            d.total_memory_bytes.map(gib).unwrap_or_else(|| "-".into()),
            d.device_count.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            d.driver.as_deref().unwrap_or("-"),
            d.nccl.as_deref().unwrap_or("-"),
            d.bundle_commit.as_deref().unwrap_or("-"),
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<30} {:<5} {:>9} {:>9} {:>9} {:>8} {:>6} {:<4}",
            "logits vs CPU golden", "dtype", "rel_l2", "tol", "rel_max", "argmax", "s", ""
        );
        for c in &self.logits {
            let _ = writeln!(
                s,
                "{:<30} {:<5} {:>9} {:>9} {:>9} {:>8} {:>6.1} {:<4}{}",
                c.model,
                c.dtype,
                sci(c.rel_l2),
                c.tolerance.map(|t| format!("{t:.0e}")).unwrap_or_else(|| "-".into()),
                sci(c.rel_max),
                c.argmax_agree.map(|a| format!("{a}/{}", c.prompts)).unwrap_or_else(|| "-".into()),
                c.seconds,
                c.status.label(),
                note(&c.note)
            );
        }
        let _ = writeln!(s);
        for c in &self.collectives {
            let _ = writeln!(s, "{:<66} {:<4}{}", c.what, c.status.label(), note(&c.note));
        }
        if let Some(b) = &self.bandwidth {
            let _ = writeln!(
                s,
                "device copy bandwidth: {:.0} GB/s (read + write, {} x {})",
                b.bytes_per_s / 1e9,
                b.iterations,
                gib(b.bytes)
            );
        }
        if let Some(m) = &self.bench_model {
            let _ = writeln!(
                s,
                "decode model: {} = {:.2} B params, {} {} weights (loaded in {:.1} s)",
                m.shape,
                m.params as f64 / 1e9,
                gib(m.weight_bytes),
                m.dtype,
                m.load_seconds
            );
        }
        if !self.decode.is_empty() {
            let _ = writeln!(
                s,
                "{:>5} {:>10} {:>11} {:>10} {:>12} {:>8} {:<4}",
                "batch", "ms/step", "tokens/s", "floor ms", "ceiling t/s", "% floor", ""
            );
            for r in &self.decode {
                let _ = writeln!(
                    s,
                    "{:>5} {:>10} {:>11} {:>10} {:>12} {:>8} {:<4}{}",
                    r.batch,
                    fixed(r.ms_per_step, 2),
                    fixed(r.tokens_per_s, 1),
                    fixed(r.floor_ms_per_step, 3),
                    fixed(r.ceiling_tokens_per_s, 0),
                    fixed(r.pct_of_floor, 1),
                    r.status.label(),
                    note(&r.note)
                );
            }
        }
        let m = &self.memory;
        let _ = writeln!(
            s,
            "peak memory: {} (baseline {}; {})",
            m.peak_bytes.map(gib).unwrap_or_else(|| "-".into()),
            m.baseline_bytes.map(gib).unwrap_or_else(|| "-".into()),
            m.method
        );
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        let _ = writeln!(s, "overall: {} in {:.1} s", self.status.label(), self.duration_s);
        s
    }
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn sci(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2e}")).unwrap_or_else(|| "-".into())
}

fn fixed(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

fn note(n: &Option<String>) -> String {
    n.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(status: Status) -> LogitsCheck {
        LogitsCheck {
            model: "llama-mha".into(),
            dtype: "bf16".into(),
            status,
            tolerance: Some(2e-2),
            rel_l2: Some(3.1e-3),
            rel_max: Some(9.9e-3),
            max_abs: Some(0.02),
            argmax_agree: Some(4),
            prompts: 4,
            values: 100,
            seconds: 0.4,
            note: None,
        }
    }

    fn report() -> Report {
        Report {
            tool: "genarm-gpu-check".into(),
            status: Status::Pass,
            started_unix: 0,
            duration_s: 1.0,
            device: DeviceInfo { kind: "cuda".into(), name: "NVIDIA H200".into(), ..Default::default() },
            logits: vec![logits(Status::Pass)],
            collectives: vec![],
            bandwidth: None,
            bench_model: None,
            decode: vec![],
            memory: Memory::default(),
            errors: vec![],
        }
    }

    #[test]
    fn overall_fails_on_any_failure_and_ignores_skips() {
        let mut r = report();
        r.logits.push(logits(Status::Skip));
        assert_eq!(r.overall(), Status::Pass);
        r.logits.push(logits(Status::Fail));
        assert_eq!(r.overall(), Status::Fail);
        let mut r = report();
        r.errors.push("boom".into());
        assert_eq!(r.overall(), Status::Fail);
    }

    #[test]
    fn table_lists_every_row_and_the_verdict() {
        let t = report().table();
        assert!(t.contains("NVIDIA H200"), "{t}");
        assert!(t.contains("llama-mha") && t.contains("3.10e-3") && t.contains("4/4"), "{t}");
        assert!(t.trim_end().ends_with("overall: PASS in 1.0 s"), "{t}");
    }
}
