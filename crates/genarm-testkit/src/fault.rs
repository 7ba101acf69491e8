//! Fault injection between the router and a worker: the directives of `genarm-fault-proxy`
//! ([`Fault`], [`Directive`], read from a control file on every call), the logits corruption it
//! applies ([`corrupt_logits`] to full rows, [`corrupt_certificate`] to the sparse wire's
//! certificates), and [`FaultProxy`], the test-side handle that starts the proxy in
//! front of a real worker and switches its fault.
//!
//! The control file holds one directive: `none`, `delay MS`, `nan`, `posinf`, `short`, `close`
//! or `hang`, optionally followed by `*N` (apply it to the next N `Step` calls only, counted
//! from the moment the file's content last changed; then behave as `none`). A missing or empty
//! file is `none`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{genarm_command, ChildProcess};

/// What the proxy does to a `Step` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward untouched.
    None,
    /// Forward, then answer after this many milliseconds.
    Delay(u64),
    /// Forward, then set one logit of every sequence result to NaN.
    Nan,
    /// Forward, then set one logit of every sequence result to +∞.
    PosInf,
    /// Forward, then cut every sequence's logits to one value fewer (V-1).
    Short,
    /// Forward (the worker advances its KV), then cut every connection of the proxy at the TCP
    /// level instead of answering: the caller sees a transport error mid-call.
    Close,
    /// Never answer (the upstream worker is not called).
    Hang,
}

/// A parsed control file: the fault and how many `Step` calls it applies to (`None`: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    /// The fault.
    pub fault: Fault,
    /// `*N`: only the next N calls.
    pub times: Option<u64>,
}

impl Directive {
    /// Parses the control file's content (see the module docs).
    pub fn parse(text: &str) -> Result<Directive> {
        let mut words: Vec<&str> = text.split_whitespace().collect();
        let mut times = None;
        if let Some(last) = words.last().and_then(|w| w.strip_prefix('*')) {
            times = Some(last.parse::<u64>().with_context(|| format!("`*{last}`: N must be a number"))?);
            words.pop();
        }
        let fault = match words.as_slice() {
            [] | ["none"] => Fault::None,
            ["delay", ms] => {
                Fault::Delay(ms.parse().with_context(|| format!("`delay {ms}`: MS must be a number"))?)
            }
            ["nan"] => Fault::Nan,
            ["posinf"] => Fault::PosInf,
            ["short"] => Fault::Short,
            ["close"] => Fault::Close,
            ["hang"] => Fault::Hang,
            _ => bail!(
                "unknown fault directive {text:?}: use none, delay MS, nan, posinf, short, close or hang, \
                 optionally followed by *N"
            ),
        };
        Ok(Directive { fault, times })
    }
}

/// Bytes per packed logit for the proto `LogitsDtype` value (0 f32, 1 bf16, 2 f16).
pub fn dtype_width(logits_dtype: i32) -> usize {
    if logits_dtype == 0 {
        4
    } else {
        2
    }
}

/// Applies `fault` (`Nan`, `PosInf` or `Short`; others leave the bytes alone) to one sequence's
/// packed little-endian logits of proto dtype `logits_dtype`. The corrupted value is the middle
/// one (not a masked id at either end).
pub fn corrupt_logits(bytes: &[u8], logits_dtype: i32, fault: Fault) -> Vec<u8> {
    let width = dtype_width(logits_dtype);
    let mut out = bytes.to_vec();
    let n = out.len() / width;
    if n == 0 {
        return out;
    }
    let at = (n / 2) * width;
    // Bit patterns of NaN and +inf: f32, bf16 (the top half of f32), f16.
    let value: &[u8] = match (fault, logits_dtype) {
        (Fault::Nan, 0) => &[0x00, 0x00, 0xc0, 0x7f],
        (Fault::PosInf, 0) => &[0x00, 0x00, 0x80, 0x7f],
        (Fault::Nan, 1) => &[0xc0, 0x7f],
        (Fault::PosInf, 1) => &[0x80, 0x7f],
        (Fault::Nan, _) => &[0x00, 0x7e],
        (Fault::PosInf, _) => &[0x00, 0x7c],
        (Fault::Short, _) => {
            out.truncate((n - 1) * width);
            return out;
        }
        _ => return out,
    };
    out[at..at + width].copy_from_slice(value);
    out
}

/// Applies `fault` (`Nan`, `PosInf` or `Short`; others leave it alone) to one sparse-wire
/// certificate: its middle candidate's value becomes NaN or +∞, or its last value is dropped
/// (ids and values then disagree in length).
pub fn corrupt_certificate(cert: &mut genarm_proto::v1::SparseLogits, fault: Fault) {
    let at = cert.logits.len() / 2;
    match fault {
        Fault::Nan if !cert.logits.is_empty() => cert.logits[at] = f32::NAN,
        Fault::PosInf if !cert.logits.is_empty() => cert.logits[at] = f32::INFINITY,
        Fault::Short => {
            cert.logits.pop();
        }
        _ => {}
    }
}

/// A running `genarm-fault-proxy` in front of one worker, with its control file.
pub struct FaultProxy {
    /// The proxy process.
    pub process: ChildProcess,
    /// The control file.
    pub fault_file: PathBuf,
    url: String,
    _dir: TempDir,
}

/// A temporary directory removed on drop (the testkit has no tempfile dependency).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl FaultProxy {
    /// Starts the proxy forwarding to `upstream` (`http://ip:port`) with no fault, named
    /// `name` in messages, and waits for its `GENARM_LISTENING grpc` line.
    pub fn start(name: &str, upstream: &str) -> Result<FaultProxy> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genarm-fault-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = TempDir(dir);
        let fault_file = dir.0.join("fault");
        std::fs::write(&fault_file, "none\n").with_context(|| format!("writing {}", fault_file.display()))?;
        let mut command = genarm_command("genarm-fault-proxy")?;
        command.arg("--upstream").arg(upstream).arg("--fault-file").arg(&fault_file);
        let mut process = ChildProcess::spawn(name, command)?;
        let addr = process.wait_listening(Instant::now() + Duration::from_secs(20))?;
        Ok(FaultProxy { process, fault_file, url: format!("http://{addr}"), _dir: dir })
    }

    /// The proxy's gRPC endpoint, `http://ip:port` (give it to the router as the worker URL).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes `directive` to the control file (atomically: the next call sees all of it).
    pub fn set(&self, directive: &str) {
        Directive::parse(directive).unwrap_or_else(|e| panic!("{e:#}"));
        write_atomic(&self.fault_file, directive).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_parse() {
        let d = |t| Directive::parse(t).unwrap();
        assert_eq!(d(""), Directive { fault: Fault::None, times: None });
        assert_eq!(d("none\n"), Directive { fault: Fault::None, times: None });
        assert_eq!(d("delay 250"), Directive { fault: Fault::Delay(250), times: None });
        assert_eq!(d("close *1"), Directive { fault: Fault::Close, times: Some(1) });
        assert_eq!(d(" hang "), Directive { fault: Fault::Hang, times: None });
        assert_eq!(d("nan").fault, Fault::Nan);
        assert_eq!(d("posinf").fault, Fault::PosInf);
        assert_eq!(d("short").fault, Fault::Short);
        assert!(Directive::parse("delay x").is_err());
        assert!(Directive::parse("explode").unwrap_err().to_string().contains("hang"));
        assert!(Directive::parse("nan *x").is_err());
    }

    #[test]
    fn corruption_respects_the_dtype() {
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let values = |b: &[u8]| -> Vec<f32> {
            b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let nan = values(&corrupt_logits(&f32s, 0, Fault::Nan));
        assert_eq!((nan[0], nan[2]), (1.0, 3.0));
        assert!(nan[1].is_nan());
        assert_eq!(values(&corrupt_logits(&f32s, 0, Fault::PosInf))[1], f32::INFINITY);
        assert_eq!(values(&corrupt_logits(&f32s, 0, Fault::Short)), vec![1.0, 2.0]);
        assert_eq!(corrupt_logits(&f32s, 0, Fault::Delay(5)), f32s);
        // bf16 is the top half of an f32; f16 NaN/+inf have an all-ones 5-bit exponent.
        let bf16: Vec<u8> =
            [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()[2..].to_vec()).collect();
        let widen =
            |b: &[u8]| -> Vec<f32> { b.chunks(2).map(|c| f32::from_le_bytes([0, 0, c[0], c[1]])).collect() };
        let nan = widen(&corrupt_logits(&bf16, 1, Fault::Nan));
        assert!(nan[2].is_nan() && nan[1] == 2.0 && nan[3] == 4.0);
        assert_eq!(widen(&corrupt_logits(&bf16, 1, Fault::PosInf))[2], f32::INFINITY);
        assert_eq!(corrupt_logits(&bf16, 2, Fault::Short).len(), 6);
        let f16 = corrupt_logits(&[0u8; 8], 2, Fault::PosInf);
        let bits = u16::from_le_bytes([f16[4], f16[5]]);
        assert_eq!((bits >> 10) & 0x1f, 0x1f, "exponent all ones");
        assert_eq!(bits & 0x3ff, 0, "zero mantissa: infinity");
        let f16 = corrupt_logits(&[0u8; 8], 2, Fault::Nan);
        let bits = u16::from_le_bytes([f16[4], f16[5]]);
        assert!((bits >> 10) & 0x1f == 0x1f && bits & 0x3ff != 0, "NaN");
    }

    #[test]
    fn certificates_are_corrupted_in_their_values_or_length() {
        let cert = genarm_proto::v1::SparseLogits {
            ids: vec![4, 1, 7],
            logits: vec![3.0, 2.0, 1.0],
            ..Default::default()
        };
        let corrupted = |fault| {
            let mut c = cert.clone();
            corrupt_certificate(&mut c, fault);
            c
        };
        assert!(corrupted(Fault::Nan).logits[1].is_nan());
        assert_eq!(corrupted(Fault::PosInf).logits, [3.0, f32::INFINITY, 1.0]);
        let short = corrupted(Fault::Short);
        assert_eq!((short.ids.len(), short.logits.len()), (3, 2));
        assert_eq!(corrupted(Fault::Delay(3)), cert);
    }
}
