//! genarm-fusion: the GenARM fusion and sampling math the router runs every step (pure: no I/O, no
//! async, no tensors).
//!
//! Per generated token, for a request with ARM weights α_i = w_i / β:
//!
//! ```text
//! ℓ_m   = log_softmax(logits_m[..V])   in f32, for the base and each ARM       (fuse)
//! fused = ℓ_base + Σ_i α_i · ℓ_i       (α_i = 0 terms skipped, never read)     (fuse)
//! p     = softmax(fused / T), then top-k, then top-p, renormalized             (Sampler)
//! T = 0 → argmax(fused), lowest id on ties                                     (Sampler)
//! ```
//!
//! Workers send raw logits packed as bytes ([`packed`]); the router unpacks them, [`fuse()`]s them and
//! draws with a per-request [`Sampler`] whose seeded generator ([`rng`]) makes every request's
//! output depend only on its seed and its own logits.
//!
//! ```
//! use genarm_fusion::{fuse, pack, unpack, ArmTerm, Sampler, SamplingParams, WireDtype};
//!
//! // A worker packs its logits; the router cuts them to the base vocabulary V while unpacking.
//! let vocab = 4;
//! let mut wire = Vec::new();
//! pack(&[2.0, 1.0, 0.5, f32::NEG_INFINITY, 9.0], WireDtype::Bf16, &mut wire);
//! let mut arm = vec![0.0; vocab];
//! unpack(&wire, WireDtype::Bf16, vocab, &mut arm)?;
//!
//! let base = [1.0, 3.0, 0.0, -1.0];
//! let mut fused = vec![0.0; vocab];
//! fuse(&base, &[ArmTerm { alpha: 0.5, logits: &arm }], &mut fused)?;
//! assert_eq!(fused[3], f32::NEG_INFINITY); // masked by the ARM
//!
//! let params = SamplingParams { temperature: 0.7, top_p: Some(0.9), seed: 42, ..Default::default() };
//! let mut sampler = Sampler::new(params)?;
//! let token = sampler.sample(&fused)?;
//! assert!(token.token < 3 && token.logprob <= 0.0);
//! # Ok::<(), genarm_fusion::FusionError>(())
//! ```
//!
//! Reproducibility: the generator (xoshiro256++ seeded through splitmix64) and the `exp` behind every
//! normalizer and weight are written here in plain IEEE f32/f64 arithmetic with fixed accumulation
//! order, so a seed's tokens do not change with a dependency upgrade, a platform or a CPU. On x86-64
//! the exponential loops are compiled for AVX2 and AVX-512F as well and chosen at run time (the only
//! `unsafe` in the crate: calling them after `is_x86_feature_detected!`); they give the same bits.

pub mod error;
pub mod fuse;
mod kernels;
pub mod packed;
pub mod rng;
pub mod sampling;
mod select;
pub mod sparse;

pub use error::FusionError;
pub use fuse::{fuse, log_softmax, ArmTerm};
pub use packed::{pack, unpack, WireDtype};
pub use sampling::{top_logprobs, Sampled, Sampler, SamplingParams};
pub use sparse::{certify_row, missing_ids, Certified, OwnedRowCertificate, RowCertificate, Uncertified};
