//! genarm-gpu-check: the one-shot GPU smoke and speed check of the CUDA build. On one device it
//! reports the device, compares the engine's logits (f32, bf16, f16) for the committed fixtures
//! and SmolLM2 with the CPU transformers goldens, runs a single-rank NCCL group, measures the
//! device copy bandwidth, times batched decode of a random 1.2 B-parameter Llama against the HBM
//! floor, and tracks peak device memory; it prints a table last and writes the results as JSON.
//! Built without the `cuda` feature it says so and exits 2 (unless `--cpu-dry-run`).

mod bench;
#[cfg(feature = "cuda")]
mod cuda;
mod goldens;
mod host;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::DType;
use clap::Parser;
use genarm_model::engine::DeviceSpec;
use genarm_model::{EngineOptions, ModelAssets};

use crate::bench::BenchShape;
use crate::report::{DecodeRow, LogitsCheck, Report, Status};

/// GPU smoke and speed check of genarm's CUDA build (see docs/gpu.md).
///
/// Prints progress on stderr, a summary table on stdout last, and writes the full results as JSON.
/// Exit status: 0 when every check passed (skipped ones aside), 1 when one failed or the check
/// could not run, 2 for usage errors and for a binary built without CUDA.
#[derive(Debug, Parser)]
#[command(name = "genarm-gpu-check", version, about, long_about)]
struct Args {
    /// Where to write the JSON results.
    #[arg(long, value_name = "FILE", default_value = "gpu-check.json")]
    out: PathBuf,

    /// CUDA device ordinal to check.
    #[arg(long, value_name = "N", default_value_t = 0)]
    device: usize,

    /// Folder holding fixtures/ and goldens/ (the bundle's run.sh sets it to its data/). Default:
    /// the repository's crates/genarm-testkit/fixtures and crates/genarm-model/tests/goldens.
    #[arg(long, env = "GENARM_GPU_DATA", value_name = "DIR")]
    data: Option<PathBuf>,

    /// The SmolLM2-135M-Instruct GGUF (scripts/fetch-smollm2.sh). Without it, DATA/
    /// smollm2-135m-instruct.gguf and the genarm cache are tried; when none exists the SmolLM2
    /// rows are skipped.
    #[arg(long, env = "GENARM_SMOLLM2_GGUF", value_name = "GGUF")]
    smollm2: Option<PathBuf>,

    /// Skip the SmolLM2 rows, even when a GGUF is given or found.
    #[arg(long)]
    no_smollm2: bool,

    /// Decode batch sizes.
    #[arg(long, value_name = "B,...", value_delimiter = ',', default_values_t = [1usize, 8, 64])]
    batches: Vec<usize>,

    /// Prompt tokens each benchmark sequence is prefilled with.
    #[arg(long, value_name = "N", default_value_t = 32)]
    prompt_tokens: usize,

    /// Timed decode steps per batch size (after 2 warm-up steps).
    #[arg(long, value_name = "N", default_value_t = 32)]
    decode_steps: usize,

    /// Skip the decode benchmark (and the bandwidth measurement).
    #[arg(long)]
    skip_bench: bool,

    /// Start no further benchmark batch after this many seconds since the start.
    #[arg(long, value_name = "S", default_value_t = 240)]
    budget_s: u64,

    /// Run the same checks on the CPU, with a toy benchmark model and without NCCL: exercises the
    /// check itself on a machine without a GPU.
    #[arg(long)]
    cpu_dry_run: bool,
}

const WARMUP_STEPS: usize = 2;
const BLOCK_SIZE: usize = 16;

fn main() -> ExitCode {
    let args = Args::parse();
    if !cfg!(feature = "cuda") && !args.cpu_dry_run {
        eprintln!(
            "genarm-gpu-check: this binary was built without CUDA (no `cuda` feature), so it cannot \
             check a GPU. Build the GPU bundle with scripts/build-gpu-bundle.sh and run \
             dist/gpu/run.sh genarm-gpu-check on the GPU machine (docs/gpu.md), or pass --cpu-dry-run \
             to exercise the check on the CPU."
        );
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(report) => {
            print!("{}", report.table());
            if report.status == Status::Pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("genarm-gpu-check: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Progress on stderr, stamped with the time since the start.
struct Progress(Instant);

impl Progress {
    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// The device the check runs on.
#[derive(Debug, Clone, Copy)]
enum Target {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda(usize),
    Cpu,
}

impl Target {
    fn spec(self) -> DeviceSpec {
        match self {
            Target::Cuda(n) => DeviceSpec::Cuda(n),
            Target::Cpu => DeviceSpec::Cpu,
        }
    }

    fn options(self, dtype: DType, tp: usize, kv_capacity_tokens: usize) -> EngineOptions {
        EngineOptions {
            device: self.spec(),
            dtype,
            tp,
            kv_capacity_tokens,
            block_size: BLOCK_SIZE,
            ..Default::default()
        }
    }
}

/// Memory tracking of either kind.
enum MemTracker {
    #[cfg(feature = "cuda")]
    Cuda(cuda::MemSampler),
    Host(host::RssTracker),
}

impl MemTracker {
    fn finish(self) -> report::Memory {
        match self {
            #[cfg(feature = "cuda")]
            MemTracker::Cuda(s) => s.finish(),
            MemTracker::Host(t) => t.finish(),
        }
    }
}

/// Bound on the relative L2 error per dtype. f32 must match closely (measured on the CPU: under
/// 2e-6). f16 within 2e-2 (CPU: under 3e-3). bf16 within 5e-2: its 8-bit mantissa alone costs
/// SmolLM2 about 2.2e-2 on the CPU engine, so 2e-2 would fail a correct build; a real bug is
/// off by 1e-1 or more.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-3,
        DType::BF16 => 5e-2,
        _ => 2e-2,
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn run(args: &Args) -> Result<Report> {
    let started = Instant::now();
    let progress = Progress(started);
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let target = if args.cpu_dry_run { Target::Cpu } else { cuda_target(args.device)? };
    let (fixtures_dir, goldens_dir) = data_dirs(args.data.as_deref())?;

    let (device, device_count, mem) = match target {
        #[cfg(feature = "cuda")]
        Target::Cuda(n) => {
            let info = cuda::device_info(n)?;
            let count = info.device_count.unwrap_or(1);
            (info, count, MemTracker::Cuda(cuda::MemSampler::start(n)?))
        }
        _ => (host::device_info(), 1, MemTracker::Host(host::RssTracker::start())),
    };
    progress.say(format!(
        "{} device {}: {} (compute capability {}, driver {})",
        device.kind,
        device.ordinal,
        device.name,
        device.compute_capability.as_deref().unwrap_or("-"),
        device.driver.as_deref().unwrap_or("-")
    ));
    let mut report = Report {
        tool: format!("genarm-gpu-check {}", env!("CARGO_PKG_VERSION")),
        status: Status::Fail,
        started_unix,
        duration_s: 0.0,
        device,
        logits: vec![],
        collectives: vec![],
        bandwidth: None,
        bench_model: None,
        decode: vec![],
        memory: Default::default(),
        errors: vec![],
    };

    // 1. Logits against the goldens: the fixtures, tensor parallelism, SmolLM2.
    let mut bench_tokenizer = None;
    for name in genarm_testkit::committed_specs().into_iter().map(|s| s.name) {
        let loaded = goldens::load(&goldens_dir, &name).and_then(|g| {
            let dir = fixtures_dir.join(&name);
            let assets = ModelAssets::open(&dir).map_err(|e| anyhow!("opening {}: {e}", dir.display()))?;
            Ok((g, assets))
        });
        let (golden, assets) = match loaded {
            Ok(x) => x,
            Err(e) => {
                report.logits.push(failed_row(&name, &format!("{e:#}")));
                continue;
            }
        };
        for dtype in DTYPES {
            let row =
                goldens::check(&name, &golden, &assets, target.options(dtype, 1, 4096), tolerance(dtype));
            progress.say(row_line(&row));
            report.logits.push(row);
        }
        if name == "llama-mha" {
            let label = format!("{name} tp=2");
            if device_count >= 2 || matches!(target, Target::Cpu) {
                for dtype in [DType::F32, DType::BF16] {
                    let row = goldens::check(
                        &label,
                        &golden,
                        &assets,
                        target.options(dtype, 2, 4096),
                        tolerance(dtype),
                    );
                    progress.say(row_line(&row));
                    report.logits.push(row);
                }
            } else {
                report.logits.push(skipped_row(&label, "needs 2 GPUs"));
            }
            bench_tokenizer = Some(assets.tokenizer.clone());
        }
    }
    match smollm2_path(args, &fixtures_dir) {
        Ok(Some(path)) => match smollm2_assets(&path, &goldens_dir) {
            Ok((golden, assets)) => {
                for dtype in DTYPES {
                    let row = goldens::check(
                        &golden.name,
                        &golden,
                        &assets,
                        target.options(dtype, 1, 4096),
                        tolerance(dtype),
                    );
                    progress.say(row_line(&row));
                    report.logits.push(row);
                }
            }
            Err(e) => report.logits.push(failed_row("smollm2-135m-instruct", &format!("{e:#}"))),
        },
        Ok(None) => {
            let why = if args.no_smollm2 {
                "--no-smollm2".to_string()
            } else {
                "GGUF not found: pass --smollm2 PATH (docs/gpu.md)".to_string()
            };
            progress.say(format!("smollm2-135m-instruct: skipped ({why})"));
            report.logits.push(skipped_row("smollm2-135m-instruct", &why));
        }
        Err(e) => report.logits.push(failed_row("smollm2-135m-instruct", &format!("{e:#}"))),
    }

    // 2. Collectives.
    match target {
        #[cfg(feature = "cuda")]
        Target::Cuda(n) => report.collectives.push(cuda::nccl_single_rank(n)),
        _ => report.collectives.push(report::CollectiveCheck {
            what: "nccl world=1".into(),
            status: Status::Skip,
            note: Some("CPU dry run: NCCL needs CUDA (tp=2 above used in-process ranks)".into()),
        }),
    }
    for c in &report.collectives {
        progress.say(format!(
            "{}: {}{}",
            c.what,
            c.status.label(),
            c.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
        ));
    }

    // 3. Bandwidth and decode throughput.
    if !args.skip_bench {
        if let Err(e) = bench(args, target, bench_tokenizer, &mut report, &progress) {
            progress.say(format!("benchmark: {e:#}"));
            report.errors.push(format!("benchmark: {e:#}"));
        }
    }

    report.memory = mem.finish();
    report.duration_s = started.elapsed().as_secs_f64();
    report.status = report.overall();
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.out, json + "\n").with_context(|| format!("writing {}", args.out.display()))?;
    progress.say(format!("wrote {}", args.out.display()));
    Ok(report)
}

#[cfg(feature = "cuda")]
fn cuda_target(device: usize) -> Result<Target> {
    Ok(Target::Cuda(device))
}

#[cfg(not(feature = "cuda"))]
fn cuda_target(_device: usize) -> Result<Target> {
    bail!("built without CUDA: only --cpu-dry-run can run")
}

fn bench(
    args: &Args,
    target: Target,
    tokenizer: Option<genarm_model::TokenizerAssets>,
    report: &mut Report,
    progress: &Progress,
) -> Result<()> {
    let (shape, bandwidth) = match target {
        #[cfg(feature = "cuda")]
        Target::Cuda(n) => (BenchShape::LLAMA_1B, cuda::copy_bandwidth(n, 1 << 30, 20)?),
        _ => (BenchShape::TINY, host::copy_bandwidth(64 << 20, 4)),
    };
    progress.say(format!("copy bandwidth: {:.1} GB/s (read + write)", bandwidth.bytes_per_s / 1e9));
    let bw = bandwidth.bytes_per_s;
    report.bandwidth = Some(bandwidth);

    let tokenizer = tokenizer.context("no fixture tokenizer (llama-mha failed to open)")?;
    let dtype = DType::BF16;
    let assets = bench::random_assets(&shape, tokenizer)?;
    let params = bench::param_count(&assets.config);
    let weight_bytes = params * dtype.size_in_bytes() as u64;
    let max_batch = args.batches.iter().copied().max().unwrap_or(1);
    let per_seq = (args.prompt_tokens + WARMUP_STEPS + args.decode_steps).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    let loading = Instant::now();
    let engine = genarm_model::Engine::load(&assets, target.options(dtype, 1, max_batch * per_seq))
        .map_err(|e| anyhow!("loading the random {} model: {e}", shape.describe()))?;
    report.bench_model = Some(report::BenchModel {
        shape: shape.describe(),
        params,
        weight_bytes,
        dtype: dtype.as_str().into(),
        load_seconds: loading.elapsed().as_secs_f64(),
    });
    progress.say(format!(
        "decode model {} ({:.2} B params) generated in {:.1} s",
        shape.describe(),
        params as f64 / 1e9,
        loading.elapsed().as_secs_f64()
    ));
    let floor_s = weight_bytes as f64 / bw;
    for (i, &batch) in args.batches.iter().enumerate() {
        let mut row = DecodeRow {
            batch,
            prompt_tokens: args.prompt_tokens,
            steps: args.decode_steps,
            status: Status::Skip,
            ms_per_step: None,
            tokens_per_s: None,
            floor_ms_per_step: Some(floor_s * 1e3),
            ceiling_tokens_per_s: Some(batch as f64 / floor_s),
            pct_of_floor: None,
            note: None,
        };
        if progress.0.elapsed().as_secs() >= args.budget_s {
            row.note = Some(format!("time budget of {} s spent", args.budget_s));
        } else {
            let first_id = 1_000_000 * (i as u64 + 1);
            match bench::decode(&engine, batch, args.prompt_tokens, WARMUP_STEPS, args.decode_steps, first_id)
            {
                Ok(t) => {
                    row.status = Status::Pass;
                    row.ms_per_step = Some(t.step_s * 1e3);
                    row.tokens_per_s = Some(batch as f64 / t.step_s);
                    row.pct_of_floor = Some(100.0 * floor_s / t.step_s);
                }
                Err(e) => {
                    row.status = Status::Fail;
                    row.note = Some(format!("{e:#}"));
                }
            }
        }
        progress.say(format!(
            "decode batch {batch}: {} ms/step, {} tokens/s {}",
            row.ms_per_step.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            row.tokens_per_s.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            row.status.label()
        ));
        report.decode.push(row);
    }
    Ok(())
}

/// `(fixtures, goldens)` folders: under `data`, or the repository's.
fn data_dirs(data: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let (fixtures, goldens) = match data {
        Some(d) => (d.join("fixtures"), d.join("goldens")),
        None => (
            genarm_testkit::fixture_dir("llama-mha").parent().map(Path::to_path_buf).unwrap_or_default(),
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../genarm-model/tests/goldens")),
        ),
    };
    for dir in [&fixtures, &goldens] {
        if !dir.is_dir() {
            bail!(
                "{} is not a folder: pass --data DIR (or GENARM_GPU_DATA) pointing at a folder with \
                 fixtures/ and goldens/, as the bundle's data/ (run the bundle through its run.sh)",
                dir.display()
            );
        }
    }
    Ok((fixtures, goldens))
}

/// The SmolLM2 GGUF to check: `--smollm2` (must exist), else the data folder's or the cache's
/// copy when present, else none.
fn smollm2_path(args: &Args, fixtures_dir: &Path) -> Result<Option<PathBuf>> {
    if args.no_smollm2 {
        return Ok(None);
    }
    if let Some(p) = args.smollm2.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        if !p.is_file() {
            bail!("--smollm2 {}: no such file (scripts/fetch-smollm2.sh fetches it)", p.display());
        }
        return Ok(Some(p.clone()));
    }
    let file = genarm_demo::smollm2::SMOLLM2.file_name;
    let in_data = fixtures_dir.parent().map(|d| d.join(file));
    let cached = genarm_testkit::smollm2::expected_path().ok();
    Ok([in_data, cached].into_iter().flatten().find(|p| p.is_file()))
}

fn smollm2_assets(path: &Path, goldens_dir: &Path) -> Result<(goldens::Golden, ModelAssets)> {
    genarm_testkit::smollm2::verify_checksum(path)?;
    let golden = goldens::load(goldens_dir, "smollm2-135m-instruct")?;
    let assets = ModelAssets::open(path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Ok((golden, assets))
}

fn failed_row(model: &str, note: &str) -> LogitsCheck {
    LogitsCheck {
        model: model.into(),
        dtype: "-".into(),
        status: Status::Fail,
        tolerance: None,
        rel_l2: None,
        rel_max: None,
        max_abs: None,
        argmax_agree: None,
        prompts: 0,
        values: 0,
        seconds: 0.0,
        note: Some(note.into()),
    }
}

fn skipped_row(model: &str, note: &str) -> LogitsCheck {
    LogitsCheck { status: Status::Skip, ..failed_row(model, note) }
}

fn row_line(r: &LogitsCheck) -> String {
    format!(
        "{} {}: rel_l2 {} (tol {}) {}{}",
        r.model,
        r.dtype,
        r.rel_l2.map(|v| format!("{v:.2e}")).unwrap_or_else(|| "-".into()),
        r.tolerance.map(|t| format!("{t:.0e}")).unwrap_or_else(|| "-".into()),
        r.status.label(),
        r.note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()
    )
}
