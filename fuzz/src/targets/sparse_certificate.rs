//! The sparse wire's certificates from arbitrary bytes: a worker's `StepResponse` (prost) whose
//! `SparseLogits` outcomes go to `Sampler::sample_certified` as the base's and the ARMs'
//! certificates under several sampling modes, and to `missing_ids` (what a refined certificate of
//! each must add). Inconsistent certificates (extras included) must give errors, and a certified
//! token must lie in the vocabulary, never a panic.
//!
//! The reply's `forward_micros` picks the vocabulary size (1..=4096) and each result's `seq_id`
//! the ARM's α (bits 8..40, as f32 bits) and, for the first, the sampling parameters.

use genarm_fusion::{missing_ids, RowCertificate, Sampler, SamplingParams};
use genarm_proto::prost::Message;
use genarm_proto::v1::{seq_result::Outcome, StepResponse};

/// Runs one input of the `sparse_certificate` target (panics on a finding).
pub fn sparse_certificate(data: &[u8]) {
    let Ok(reply) = StepResponse::decode(data) else {
        return;
    };
    let vocab = (reply.forward_micros % 4096) as usize + 1;
    let certs: Vec<(u64, RowCertificate<'_>)> = reply
        .results
        .iter()
        .filter_map(|r| match &r.outcome {
            Some(Outcome::Sparse(s)) => Some((
                r.seq_id,
                RowCertificate {
                    ids: &s.ids,
                    logits: &s.logits,
                    max: s.max,
                    log_sum: s.log_sum,
                    outside_max: s.outside_max,
                    tail_log_sum: s.tail_log_sum,
                    extra_ids: &s.extra_ids,
                    extra_logits: &s.extra_logits,
                },
            )),
            _ => None,
        })
        .collect();
    let Some(((seed, base), arms)) = certs.split_first() else {
        return;
    };
    let views: Vec<RowCertificate<'_>> = certs.iter().map(|(_, c)| *c).collect();
    let mut missing = Vec::new();
    for (m, own) in views.iter().enumerate() {
        missing_ids(&views, m, &mut missing);
        assert!(missing.windows(2).all(|w| w[0] < w[1]), "missing ids not sorted and distinct");
        assert!(
            missing.iter().all(|id| !own.ids.contains(id) && !own.extra_ids.contains(id)),
            "a missing id the model already holds"
        );
    }
    let arms: Vec<(f32, RowCertificate<'_>)> =
        arms.iter().map(|(id, c)| (f32::from_bits((id >> 8) as u32), *c)).collect();
    let modes = [
        SamplingParams { temperature: 0.0, ..Default::default() },
        SamplingParams { temperature: 0.7, top_p: Some(0.9), ..Default::default() },
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 1.5, top_k: Some((*seed % 7) as usize + 1), ..Default::default() },
        SamplingParams { temperature: f32::from_bits((seed >> 32) as u32).abs(), ..Default::default() },
    ];
    for params in modes {
        let Ok(mut sampler) = Sampler::new(SamplingParams { seed: *seed, ..params }) else {
            continue;
        };
        for want_logprob in [false, true] {
            if let Ok(Ok(c)) = sampler.sample_certified(base, &arms, vocab, want_logprob) {
                assert!((c.token as usize) < vocab, "certified id {} outside vocab {vocab}", c.token);
                if let Some(lp) = c.logprob {
                    assert!(!lp.is_nan() && lp <= 0.0, "logprob {lp} for id {}", c.token);
                }
            }
        }
    }
}
