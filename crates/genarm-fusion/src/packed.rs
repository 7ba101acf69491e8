//! Logits on the wire: a vocabulary's worth of f32 values packed as little-endian bytes in a stated
//! element type (f32 exact; bf16 and f16 halve the bytes), and unpacked back into f32.

use std::fmt;

use half::{bf16, f16};

use crate::error::FusionError;

/// The element type of packed logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireDtype {
    /// IEEE binary32: exact.
    F32,
    /// bfloat16: f32's range, 8 bits of significand (relative error ≤ 2^-9).
    Bf16,
    /// IEEE binary16: 11 bits of significand (relative error ≤ 2^-12), finite range ±65504.
    F16,
}

impl WireDtype {
    /// Bytes per value.
    pub const fn size_bytes(self) -> usize {
        match self {
            WireDtype::F32 => 4,
            WireDtype::Bf16 | WireDtype::F16 => 2,
        }
    }

    /// The lower-case name (`f32`, `bf16`, `f16`).
    pub const fn name(self) -> &'static str {
        match self {
            WireDtype::F32 => "f32",
            WireDtype::Bf16 => "bf16",
            WireDtype::F16 => "f16",
        }
    }
}

impl fmt::Display for WireDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packs `logits` into `out` as little-endian `dtype` values, replacing `out`'s contents (its
/// allocation is reused).
///
/// f32 is exact. bf16 and f16 round to nearest even; finite values beyond the type's largest finite
/// value saturate to it (so a large finite logit never turns into +∞ on the wire), while ±∞ (masked
/// ids) and NaN are kept.
pub fn pack(logits: &[f32], dtype: WireDtype, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(logits.len() * dtype.size_bytes());
    match dtype {
        WireDtype::F32 => {
            for &x in logits {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        WireDtype::Bf16 => {
            let max = bf16::MAX.to_f32();
            for &x in logits {
                out.extend_from_slice(&bf16::from_f32(saturate(x, max)).to_le_bytes());
            }
        }
        WireDtype::F16 => {
            let max = f16::MAX.to_f32();
            for &x in logits {
                out.extend_from_slice(&f16::from_f32(saturate(x, max)).to_le_bytes());
            }
        }
    }
}

/// Clamps finite `x` to `[-max, max]`; infinities and NaN pass unchanged.
#[inline(always)]
fn saturate(x: f32, max: f32) -> f32 {
    if x.is_finite() {
        x.clamp(-max, max)
    } else {
        x
    }
}

/// Unpacks the first `n` little-endian `dtype` values of `bytes` into `out[..n]`.
///
/// `bytes` may hold more than `n` values (a model with a larger vocabulary than the base): cutting
/// to `V` is the caller's choice of `n`. It must hold at least `n` values, and a whole number of
/// them; otherwise [`FusionError::PackedLength`] names the expected and actual lengths.
///
/// # Panics
/// If `out` is shorter than `n`.
pub fn unpack(bytes: &[u8], dtype: WireDtype, n: usize, out: &mut [f32]) -> Result<(), FusionError> {
    let size = dtype.size_bytes();
    let expected = n * size;
    if bytes.len() < expected || bytes.len() % size != 0 {
        return Err(FusionError::PackedLength { dtype, n, expected, actual: bytes.len() });
    }
    assert!(out.len() >= n, "unpack: output buffer holds {} values, {n} needed", out.len());
    let bytes = &bytes[..expected];
    let out = &mut out[..n];
    match dtype {
        WireDtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WireDtype::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                // bf16 is the high half of an f32: widening is exact.
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        WireDtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_logits() -> Vec<f32> {
        let mut v: Vec<f32> = (0..1003).map(|i| ((i as f32) * 0.37).sin() * 12.0 - 3.0).collect();
        v[10] = f32::NEG_INFINITY;
        v[11] = 0.0;
        v[12] = -0.0;
        v[13] = 1.0e-30;
        v
    }

    #[test]
    fn f32_round_trips_exactly() {
        let v = sample_logits();
        let mut bytes = vec![1, 2, 3];
        pack(&v, WireDtype::F32, &mut bytes);
        assert_eq!(bytes.len(), v.len() * 4);
        let mut back = vec![0.0; v.len()];
        unpack(&bytes, WireDtype::F32, v.len(), &mut back).unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(&bytes[..4], &v[0].to_le_bytes());
    }

    #[test]
    fn half_types_round_trip_within_their_precision() {
        let v = sample_logits();
        for (dtype, rel) in [(WireDtype::Bf16, 1.0 / 256.0), (WireDtype::F16, 1.0 / 2048.0)] {
            let mut bytes = Vec::new();
            pack(&v, dtype, &mut bytes);
            assert_eq!(bytes.len(), v.len() * 2);
            let mut back = vec![0.0; v.len()];
            unpack(&bytes, dtype, v.len(), &mut back).unwrap();
            for (&a, &b) in v.iter().zip(&back) {
                if a == f32::NEG_INFINITY {
                    assert_eq!(b, f32::NEG_INFINITY);
                } else if a.abs() < 1e-4 {
                    assert!((a - b).abs() < 1e-4, "{dtype}: {a} -> {b}");
                } else {
                    assert!(((a - b) / a).abs() <= rel, "{dtype}: {a} -> {b}");
                }
            }
        }
    }

    #[test]
    fn half_types_saturate_large_finite_values() {
        let v = [1.0e6, -1.0e6, f32::MAX, f32::INFINITY, f32::NEG_INFINITY];
        let mut bytes = Vec::new();
        let mut back = [0.0; 5];
        pack(&v, WireDtype::F16, &mut bytes);
        unpack(&bytes, WireDtype::F16, 5, &mut back).unwrap();
        assert_eq!(back, [65504.0, -65504.0, 65504.0, f32::INFINITY, f32::NEG_INFINITY]);
        pack(&v, WireDtype::Bf16, &mut bytes);
        unpack(&bytes, WireDtype::Bf16, 5, &mut back).unwrap();
        assert!(back[2].is_finite() && back[2] > 3.0e38);
        assert_eq!(back[3], f32::INFINITY);
        assert_eq!(back[4], f32::NEG_INFINITY);
    }

    #[test]
    fn unpack_takes_the_first_n_values() {
        let v: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let mut bytes = Vec::new();
        pack(&v, WireDtype::F32, &mut bytes);
        let mut out = [9.0f32; 8];
        unpack(&bytes, WireDtype::F32, 6, &mut out).unwrap();
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 9.0]);
    }

    #[test]
    fn wrong_lengths_name_expected_and_actual() {
        let mut out = [0.0f32; 8];
        let err = unpack(&[0u8; 14], WireDtype::F32, 4, &mut out).unwrap_err();
        assert_eq!(err, FusionError::PackedLength { dtype: WireDtype::F32, n: 4, expected: 16, actual: 14 });
        let msg = err.to_string();
        assert!(msg.contains("16") && msg.contains("14") && msg.contains("f32"), "{msg}");
        let err = unpack(&[0u8; 9], WireDtype::Bf16, 4, &mut out).unwrap_err();
        assert_eq!(err, FusionError::PackedLength { dtype: WireDtype::Bf16, n: 4, expected: 8, actual: 9 });
        assert!(unpack(&[0u8; 10], WireDtype::F16, 4, &mut out).is_ok());
    }
}
