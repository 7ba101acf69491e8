//! Phase 1 of a step: what each model must compute, within the per-step token budget
//! (`--max-batch-tokens`). Every running sequence contributes, per model it needs, the tokens
//! that model's worker does not hold yet: decodes (one token) always and in full, prefill (a new
//! prompt, or a replay after a lost replica, a failover or a preemption) in arrival order, cut
//! into chunks that fit what the decodes left of the budget. With a restart grace period, a
//! sequence whose model has no ready worker is held (or failed past the period).
//!
//! The budget is counted per model call: the tokens of one worker's `Step` (the batched forward
//! it runs) are what a step's latency grows with, and every model renders its own prompt, so the
//! same sequence may need a different number of tokens on each. A chunk ends before the
//! sequence's current length; its logits are not sampled from (`apply` keeps only logits at the
//! full length, and a sequence samples when every model it needs has them).

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Fate, Scheduler};
use crate::scheduler::SchedulerError;
use crate::workers::{SeqStep, StepBackend};

/// The share of the budget prefill always gets, as a divisor: when the decodes leave less than
/// `budget / PREFILL_FLOOR_DIVISOR` tokens (a batch of many streams under a small budget), the
/// oldest prefill still gets that many, so it can never starve behind the decodes. A call then
/// carries at most `decodes + budget / 8` tokens, a bounded overshoot, and a prompt of `P` tokens
/// is in after at most `⌈8·P / budget⌉` steps. Decodes are never cut instead: delaying a running
/// stream is what chunking exists to avoid.
const PREFILL_FLOOR_DIVISOR: usize = 8;

/// A partial chunk ends on a multiple of this many positions when it can, so that the next
/// chunk starts on a KV block boundary (any block size dividing it) and the worker's prefix
/// cache can serve it.
const CHUNK_ALIGN: u32 = 16;

/// One sequence's part of one model's `Step` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    /// Running index of the sequence.
    pub seq: usize,
    /// Its model slot.
    pub slot: usize,
    /// The tokens the worker holds once this call succeeds: the sequence's current length, or
    /// less for an intermediate prefill chunk.
    pub upto: u32,
}

/// The work of one step.
pub(super) struct StepPlan {
    /// Per model: each sequence sent to it, in payload order.
    pub targets: Vec<Vec<Sent>>,
    /// Per model: the sequences of its `Step` call (empty: no call).
    pub payloads: Vec<Vec<SeqStep>>,
    /// Sequences whose fate is already decided (stuck, or past the restart grace period).
    pub fates: BTreeMap<usize, Fate>,
    /// Sequences held without a step while their worker is down (restart grace).
    pub on_hold: usize,
    /// Prefill chunks that end before their sequence's current length (partial prefills).
    pub partial_chunks: u64,
}

/// A model slot that needs more than one token (a prefill or a replay).
struct PrefillWant {
    seq: usize,
    slot: usize,
    arrival: u64,
}

impl<B: StepBackend> Scheduler<B> {
    /// Plans the step (see the module docs).
    pub(super) fn plan(&mut self) -> StepPlan {
        let n_models = self.backend.num_models();
        let mut targets: Vec<Vec<Sent>> = vec![Vec::new(); n_models];
        let mut payloads: Vec<Vec<SeqStep>> = vec![Vec::new(); n_models];
        let mut fates: BTreeMap<usize, Fate> = BTreeMap::new();
        let mut decode_tokens = vec![0usize; n_models];
        let mut prefills: Vec<Vec<PrefillWant>> = (0..n_models).map(|_| Vec::new()).collect();
        let grace = self.restart_grace;
        let mut on_hold = 0usize;
        for (si, seq) in self.running.iter_mut().enumerate() {
            if !grace.is_zero() {
                // Restart grace: a sequence whose model slot has no ready worker gets no step
                // until one is ready again (then it is replayed), or fails past the grace period.
                if let Some(m) = seq.models.iter().map(|m| m.model).find(|&m| !self.backend.is_ready(m)) {
                    let since = *seq.outage_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > grace {
                        fates.insert(
                            si,
                            Fate::Fail(SchedulerError::WorkerFailed {
                                worker: self.backend.display_name(m),
                                message: format!(
                                    "no ready worker came back within the restart grace period of {} s \
                                     (--worker-restart-grace-secs)",
                                    grace.as_secs_f64()
                                ),
                            }),
                        );
                    } else {
                        on_hold += 1;
                    }
                    continue;
                }
                if seq.outage_since.take().is_some() {
                    tracing::info!(request_id = %seq.request_id, seq_id = seq.id,
                        "worker ready again: resuming the request by replay");
                }
            }
            for (slot, sm) in seq.models.iter().enumerate() {
                if sm.logits.is_some() {
                    continue;
                }
                let missing = seq.missing_tokens(slot);
                if missing == 0 {
                    // Nothing to send yet no logits: it could never progress (validation
                    // prevents this; fail rather than spin).
                    fates.insert(
                        si,
                        Fate::Fail(SchedulerError::Internal(format!(
                            "sequence {} has no new token for {}",
                            seq.id,
                            self.backend.display_name(sm.model)
                        ))),
                    );
                    continue;
                }
                if missing == 1 {
                    // A decode: always sent, whatever the budget.
                    decode_tokens[sm.model] += 1;
                    targets[sm.model].push(Sent { seq: si, slot, upto: sm.pos + 1 });
                    payloads[sm.model].push(SeqStep {
                        seq_id: seq.id,
                        start_pos: sm.pos,
                        tokens: seq.tokens_from(slot, sm.pos as usize),
                    });
                } else {
                    prefills[sm.model].push(PrefillWant { seq: si, slot, arrival: seq.arrival });
                }
            }
        }

        let budget = self.cfg.max_batch_tokens.max(1);
        let floor = (budget / PREFILL_FLOOR_DIVISOR).max(1);
        let mut partial_chunks = 0u64;
        for (m, mut wants) in prefills.into_iter().enumerate() {
            // Oldest first: the request that has waited longest finishes its prefill first.
            wants.sort_by_key(|w| (w.arrival, w.seq));
            let mut left = budget.saturating_sub(decode_tokens[m]).max(floor);
            for PrefillWant { seq: si, slot, .. } in wants {
                if left == 0 {
                    break;
                }
                let seq = &self.running[si];
                let pos = seq.models[slot].pos;
                let mut tokens = seq.tokens_from(slot, pos as usize);
                let mut chunk = tokens.len().min(left);
                if chunk < tokens.len() {
                    let aligned_end = (pos + chunk as u32) / CHUNK_ALIGN * CHUNK_ALIGN;
                    if aligned_end > pos {
                        chunk = (aligned_end - pos) as usize;
                    }
                    tokens.truncate(chunk);
                    partial_chunks += 1;
                }
                left -= chunk;
                targets[m].push(Sent { seq: si, slot, upto: pos + chunk as u32 });
                payloads[m].push(SeqStep { seq_id: seq.id, start_pos: pos, tokens });
            }
        }

        // A request's queue wait ends with its first step that sends it anything (a sequence
        // admitted behind a long prefill may wait a step or more for its first chunk).
        for sent in targets.iter().flatten() {
            self.running[sent.seq].queue_wait = None;
        }

        StepPlan { targets, payloads, fates, on_hold, partial_chunks }
    }
}
