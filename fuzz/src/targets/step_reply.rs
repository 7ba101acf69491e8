//! A worker's `StepResponse` from arbitrary bytes (prost), its packed logits unpacked at any
//! dtype and vocabulary size, fused (base + ARMs at arbitrary α) and sampled: wrong lengths,
//! NaN/±∞ and all-masked rows must give errors, never panics.
//!
//! The reply's `forward_micros` picks the vocabulary size (1..=2048) and each result's `seq_id`
//! its wire dtype (low 2 bits), its α (bits 8..40, as f32 bits) and the sampling parameters.

use genarm_fusion::{fuse, top_logprobs, unpack, ArmTerm, Sampler, SamplingParams, WireDtype};
use genarm_proto::prost::Message;
use genarm_proto::v1::{seq_result::Outcome, StepResponse};

/// Runs one input of the `step_reply` target (panics on a finding).
pub fn step_reply(data: &[u8]) {
    let Ok(reply) = StepResponse::decode(data) else {
        return;
    };
    let vocab = (reply.forward_micros % 2048) as usize + 1;
    let mut rows: Vec<(u64, Vec<f32>)> = Vec::new();
    for r in &reply.results {
        let Some(Outcome::Logits(bytes)) = &r.outcome else {
            continue;
        };
        let dtype = match r.seq_id & 3 {
            0 => WireDtype::F32,
            1 => WireDtype::Bf16,
            _ => WireDtype::F16,
        };
        let mut out = vec![0f32; vocab];
        if unpack(bytes, dtype, vocab, &mut out).is_ok() {
            rows.push((r.seq_id, out));
        }
    }
    let Some(((seed, base), arms)) = rows.split_first() else {
        return;
    };
    let arms: Vec<ArmTerm<'_>> =
        arms.iter().map(|(id, logits)| ArmTerm { alpha: f32::from_bits((id >> 8) as u32), logits }).collect();
    let mut fused = vec![0f32; vocab];
    if fuse(base, &arms, &mut fused).is_err() {
        return;
    }
    let params = SamplingParams {
        temperature: f32::from_bits((seed >> 32) as u32),
        top_k: ((seed >> 2) & 1 == 1).then_some(((seed >> 3) & 0xffff) as usize),
        top_p: ((seed >> 19) & 1 == 1).then_some(f32::from_bits((seed >> 20) as u32 & 0x3fff_ffff)),
        seed: *seed,
    };
    if let Ok(mut sampler) = Sampler::new(params) {
        if let Ok(s) = sampler.sample(&fused) {
            assert!((s.token as usize) < vocab, "sampled id {} outside vocab {vocab}", s.token);
            assert!(fused[s.token as usize] != f32::NEG_INFINITY, "sampled a masked id {}", s.token);
            assert!(!s.logprob.is_nan(), "NaN logprob for id {}", s.token);
        }
        let _ = sampler.distribution(&fused);
    }
    let _ = top_logprobs(&fused, (seed & 31) as usize);
}
