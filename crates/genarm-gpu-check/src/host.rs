//! Host-side facts and the CPU counterparts used by `--cpu-dry-run`: CPU name, host memory copy
//! bandwidth, peak resident memory, and the NVIDIA driver release when the machine has one.

use std::time::Instant;

use crate::report::{Bandwidth, DeviceInfo, Memory};

fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// `kB` value of a /proc field, in bytes.
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let v = proc_field(path, key)?;
    Some(v.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
}

/// The NVIDIA driver release: `GENARM_GPU_DRIVER` (run.sh exports what it found), else
/// /proc/driver/nvidia/version.
pub fn driver_release() -> Option<String> {
    if let Some(v) = std::env::var("GENARM_GPU_DRIVER").ok().filter(|v| !v.is_empty()) {
        return Some(v);
    }
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    let after = text.split("Kernel Module").nth(1)?;
    after
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

/// The CPU, described as a device.
pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        kind: "cpu".into(),
        ordinal: 0,
        name: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into()),
        compute_capability: None,
        total_memory_bytes: proc_kib("/proc/meminfo", "MemTotal"),
        device_count: None,
        driver: driver_release(),
        nccl: None,
        bundle_commit: std::env::var("GENARM_BUNDLE_COMMIT").ok(),
    }
}

/// Times `iterations` copies of `bytes` between two host buffers.
pub fn copy_bandwidth(bytes: usize, iterations: usize) -> Bandwidth {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src);
    let started = Instant::now();
    for _ in 0..iterations {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Bandwidth {
        bytes: bytes as u64,
        iterations,
        bytes_per_s: 2.0 * bytes as f64 * iterations as f64 / seconds,
    }
}

/// Resident memory now (start) and at its peak (finish), from /proc/self/status.
pub struct RssTracker {
    baseline: Option<u64>,
}

impl RssTracker {
    /// Notes the current resident size.
    pub fn start() -> Self {
        Self { baseline: proc_kib("/proc/self/status", "VmRSS") }
    }

    /// The process's peak resident size.
    pub fn finish(self) -> Memory {
        Memory {
            method: "process peak resident memory (VmHWM)".into(),
            baseline_bytes: self.baseline,
            peak_bytes: proc_kib("/proc/self/status", "VmHWM"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_are_read() {
        let d = device_info();
        assert_eq!(d.kind, "cpu");
        assert!(d.total_memory_bytes.unwrap_or(0) > 0);
        let m = RssTracker::start().finish();
        assert!(m.peak_bytes.unwrap_or(0) >= m.baseline_bytes.unwrap_or(0));
        let b = copy_bandwidth(1 << 20, 2);
        assert!(b.bytes_per_s > 0.0);
    }
}
