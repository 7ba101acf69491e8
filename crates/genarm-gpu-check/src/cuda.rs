//! What only the CUDA build does: device information from the driver, a single-rank NCCL group,
//! device-to-device copy bandwidth, and device memory sampled while the check runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use cudarc::driver::CudaContext;
use genarm_model::communicator::{Communicator, NcclCommunicator};

use crate::report::{Bandwidth, CollectiveCheck, DeviceInfo, Memory, Status};

fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    CudaContext::new(ordinal).map_err(|e| anyhow!("cannot open CUDA device {ordinal}: {e:?}"))
}

/// Number of visible CUDA devices; the error says what to check when the driver is unusable.
pub fn device_count() -> Result<usize> {
    let n = CudaContext::device_count().map_err(|e| {
        anyhow!(
            "the CUDA driver cannot be initialised ({e:?}): is a GPU visible to this process \
             (CUDA_VISIBLE_DEVICES, container runtime) and the NVIDIA kernel module loaded?"
        )
    })?;
    Ok(n.max(0) as usize)
}

/// Name, compute capability, memory and versions of device `ordinal`.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    let count = device_count()?;
    ensure!(ordinal < count, "CUDA device {ordinal} was asked for but {count} are visible");
    let ctx = context(ordinal)?;
    let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("compute capability: {e:?}"))?;
    let mut cuda_version: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
    let cuda = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut cuda_version) }
        .result()
        .ok()
        .map(|()| format!("CUDA {}.{}", cuda_version / 1000, (cuda_version % 1000) / 10));
    let release = crate::host::driver_release();
    let driver = match (release, cuda) {
        (Some(r), Some(c)) => Some(format!("{r} ({c})")),
        (r, c) => r.or(c),
    };
    let nccl = cudarc::nccl::result::get_nccl_version()
        .ok()
        .map(|v| format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100));
    Ok(DeviceInfo {
        kind: "cuda".into(),
        ordinal,
        name: ctx.name().map_err(|e| anyhow!("device name: {e:?}"))?,
        compute_capability: Some(format!("{major}.{minor}")),
        total_memory_bytes: ctx.total_mem().ok().map(|b| b as u64),
        device_count: Some(count),
        driver,
        nccl,
        bundle_commit: std::env::var("GENARM_BUNDLE_COMMIT").ok(),
    })
}

/// A one-rank NCCL group on device `ordinal`: all-reduce, all-gather and broadcast must return
/// their input exactly, in f32 and bf16.
pub fn nccl_single_rank(ordinal: usize) -> CollectiveCheck {
    let what = "nccl world=1: all_reduce, all_gather, broadcast (f32, bf16)".to_string();
    let run = || -> Result<()> {
        let device = Device::new_cuda(ordinal)?;
        let id = NcclCommunicator::new_id().map_err(|e| anyhow!("{e}"))?;
        let comm = NcclCommunicator::join(&device, 0, 1, id).map_err(|e| anyhow!("{e}"))?;
        ensure!(comm.rank() == 0 && comm.world_size() == 1, "rank {} of {}", comm.rank(), comm.world_size());
        for dtype in [DType::F32, DType::BF16] {
            let t = Tensor::arange(0f32, 4096f32, &device)?.reshape((64, 64))?.to_dtype(dtype)?;
            let d = dtype.as_str();
            same(&comm.all_reduce_sum(&t).map_err(|e| anyhow!("{e}"))?, &t)
                .context(format!("all_reduce {d}"))?;
            same(&comm.all_gather(&t, 1).map_err(|e| anyhow!("{e}"))?, &t)
                .context(format!("all_gather {d}"))?;
            same(&comm.broadcast(&t).map_err(|e| anyhow!("{e}"))?, &t).context(format!("broadcast {d}"))?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => CollectiveCheck { what, status: Status::Pass, note: None },
        Err(e) => CollectiveCheck { what, status: Status::Fail, note: Some(format!("{e:#}")) },
    }
}

fn same(got: &Tensor, want: &Tensor) -> Result<()> {
    ensure!(got.dims() == want.dims(), "shape {:?}, expected {:?}", got.dims(), want.dims());
    ensure!(got.dtype() == want.dtype(), "dtype {:?}, expected {:?}", got.dtype(), want.dtype());
    let diff =
        (got.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    ensure!(diff == 0.0, "differs from the input by up to {diff}");
    Ok(())
}

/// Times `iterations` copies of `bytes` from one device buffer to another.
pub fn copy_bandwidth(ordinal: usize, bytes: usize, iterations: usize) -> Result<Bandwidth> {
    let ctx = context(ordinal)?;
    let stream = ctx.new_stream().map_err(|e| anyhow!("new stream: {e:?}"))?;
    let src = stream.alloc_zeros::<u8>(bytes).map_err(|e| anyhow!("allocating {bytes} bytes: {e:?}"))?;
    let mut dst = stream.alloc_zeros::<u8>(bytes).map_err(|e| anyhow!("allocating {bytes} bytes: {e:?}"))?;
    let copy_err = |e| anyhow!("cuMemcpyDtoDAsync: {e:?}");
    for _ in 0..3 {
        stream.memcpy_dtod(&src, &mut dst).map_err(copy_err)?;
    }
    stream.synchronize().map_err(|e| anyhow!("synchronize: {e:?}"))?;
    let started = Instant::now();
    for _ in 0..iterations {
        stream.memcpy_dtod(&src, &mut dst).map_err(copy_err)?;
    }
    stream.synchronize().map_err(|e| anyhow!("synchronize: {e:?}"))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Bandwidth {
        bytes: bytes as u64,
        iterations,
        bytes_per_s: 2.0 * bytes as f64 * iterations as f64 / seconds,
    })
}

/// Samples device-wide used memory (cuMemGetInfo) every 10 ms on a thread of its own.
pub struct MemSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    baseline: u64,
    thread: Option<JoinHandle<()>>,
}

impl MemSampler {
    /// Starts sampling device `ordinal`.
    pub fn start(ordinal: usize) -> Result<Self> {
        let ctx = context(ordinal)?;
        let (free, total) = ctx.mem_get_info().map_err(|e| anyhow!("cuMemGetInfo: {e:?}"))?;
        let baseline = (total - free) as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::Builder::new().name("gpu-mem-sampler".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((free, total)) = ctx.mem_get_info() {
                        peak.fetch_max((total - free) as u64, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })?
        };
        Ok(Self { stop, peak, baseline, thread: Some(thread) })
    }

    /// Stops sampling and reports.
    pub fn finish(mut self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Memory {
            method: "device-wide used memory (cuMemGetInfo), sampled every 10 ms".into(),
            baseline_bytes: Some(self.baseline),
            peak_bytes: Some(self.peak.load(Ordering::Relaxed)),
        }
    }
}
