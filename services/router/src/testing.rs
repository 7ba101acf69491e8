//! In-process fakes for unit tests of the scheduling logic: `FakeBackend` (deterministic fake
//! models with a KV budget, failure injection and call records, speaking the same
//! [`StepBackend`] trait as the gRPC workers) and `FakeText` (one token → `<id>`). The
//! end-to-end tests use real worker processes instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genarm_fusion::{
    certify_row, fuse, pack, ArmTerm, OwnedRowCertificate, Sampler, SamplingParams, WireDtype,
};
use genarm_text::ModelText;

use crate::scheduler::{Detokenizer, TextStep};
use crate::workers::{
    Bytes, CallError, LogitsWire, ModelIndex, RowFetch, SeqErrorKind, SeqOutcome, SeqStep, SparseRow,
    StepBackend, StepReply, WorkerHealth,
};
use crate::workers::{Catalog, ModelEntry};

/// The fake model `model`'s logits after `tokens` (depends on the whole history).
pub fn fake_logits(model: usize, tokens: &[u32], vocab: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (model as u64).wrapping_mul(0x1000_0000_01b3);
    for &t in tokens {
        h = (h ^ t as u64).wrapping_mul(0x1000_0000_01b3);
    }
    (0..vocab)
        .map(|i| {
            let mut x = h ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 29;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 32;
            (x % 1000) as f32 / 150.0
        })
        .collect()
}

/// Mutable state of one fake worker.
#[derive(Default)]
pub struct FakeState {
    /// Tokens held per sequence.
    pub held: HashMap<u64, Vec<u32>>,
    /// KV capacity in tokens (over all sequences).
    pub kv_capacity: usize,
    /// Sequence ids of each step call.
    pub steps: Vec<Vec<u64>>,
    /// Each step call's sequences as (sequence id, start position, tokens sent).
    pub calls: Vec<Vec<(u64, u32, usize)>>,
    /// Fail this many next step calls as a whole.
    pub fail_calls: usize,
    /// Send NaN logits on the next step.
    pub nan_next: bool,
    /// On every step, set these logits (token id, value) of every sequence.
    pub poison: Vec<(usize, f32)>,
    /// Forget every sequence before the next step (a restarted worker).
    pub forget_next: bool,
    /// On the next step, lose every sequence and answer REPLICA_LOST for the ones it held (a
    /// replica that failed while another one is ready).
    pub lose_next: bool,
    /// Like `lose_next`, on the first step at which some sequence already holds at least this
    /// many tokens (a replica that fails in the middle of a chunked prefill).
    pub lose_when_holding: Option<usize>,
    /// Released ids.
    pub released: Vec<u64>,
    /// The rows of the last sparse step, per sequence (for `fetch_rows`).
    pub kept_rows: HashMap<u64, Vec<f32>>,
    /// Sequence ids of each `fetch_rows` call for whole rows.
    pub fetches: Vec<Vec<u64>>,
    /// Sequence ids of each `fetch_rows` call for refined certificates.
    pub refines: Vec<Vec<u64>>,
    /// Every sequence of every `fetch_rows` call, as (sequence id, tokens held then).
    pub fetched_at: Vec<(u64, usize)>,
    /// Fail this many next `fetch_rows` calls as a whole.
    pub fail_fetches: usize,
    /// On the next sparse step, send certificates whose bound on the values left out is above a
    /// value sent (an inconsistent certificate).
    pub bad_certificate_next: bool,
}

/// One fake worker.
pub struct FakeModel {
    /// Display name.
    pub name: String,
    /// Readiness.
    pub ready: AtomicBool,
    /// State.
    pub state: Mutex<FakeState>,
}

/// A set of fake workers: model 0 is the base.
pub struct FakeBackend {
    /// Vocabulary size.
    pub vocab: usize,
    /// The workers.
    pub models: Vec<FakeModel>,
    /// Delay of each step call.
    pub delay: Duration,
}

impl FakeBackend {
    /// `n` models with `vocab` logits and `kv_capacity` tokens each.
    pub fn new(n: usize, vocab: usize, kv_capacity: usize) -> Self {
        let models = (0..n)
            .map(|i| FakeModel {
                name: if i == 0 { "base-worker fake".into() } else { format!("rm-worker \"arm{i}\" fake") },
                ready: AtomicBool::new(true),
                state: Mutex::new(FakeState { kv_capacity, ..Default::default() }),
            })
            .collect();
        FakeBackend { vocab, models, delay: Duration::from_millis(2) }
    }

    /// Locks model `m`'s state.
    pub fn state(&self, m: usize) -> std::sync::MutexGuard<'_, FakeState> {
        self.models[m].state.lock().unwrap()
    }
}

impl WorkerHealth for FakeBackend {
    fn num_models(&self) -> usize {
        self.models.len()
    }

    fn display_name(&self, model: ModelIndex) -> String {
        self.models[model].name.clone()
    }

    fn is_ready(&self, model: ModelIndex) -> bool {
        self.models[model].ready.load(Ordering::SeqCst)
    }
}

impl StepBackend for FakeBackend {
    fn mark_failed(&self, model: ModelIndex, _reason: &str) {
        self.models[model].ready.store(false, Ordering::SeqCst);
    }

    async fn step(
        &self,
        model: ModelIndex,
        seqs: Vec<SeqStep>,
        logits_len: u32,
        dtype: WireDtype,
        wire: LogitsWire,
    ) -> Result<StepReply, CallError> {
        let started = std::time::Instant::now();
        tokio::time::sleep(self.delay).await;
        let mut st = self.state(model);
        st.steps.push(seqs.iter().map(|s| s.seq_id).collect());
        st.calls.push(seqs.iter().map(|s| (s.seq_id, s.start_pos, s.tokens.len())).collect());
        if st.fail_calls > 0 {
            st.fail_calls -= 1;
            return Err(CallError::Transport("connection refused".into()));
        }
        if std::mem::take(&mut st.forget_next) {
            st.held.clear();
        }
        let lose_mid_sequence = st.lose_when_holding.is_some_and(|n| st.held.values().any(|h| h.len() >= n));
        if lose_mid_sequence {
            st.lose_when_holding = None;
        }
        let lost: Vec<u64> = if std::mem::take(&mut st.lose_next) || lose_mid_sequence {
            st.held.drain().map(|(id, _)| id).collect()
        } else {
            vec![]
        };
        let nan = std::mem::take(&mut st.nan_next);
        let bad_certificate = std::mem::take(&mut st.bad_certificate_next);
        let mut out = Vec::with_capacity(seqs.len());
        for s in seqs {
            let held_len = st.held.get(&s.seq_id).map(Vec::len);
            let err = |kind, message: &str| SeqOutcome::Error { kind, message: message.to_string() };
            if lost.contains(&s.seq_id) {
                out.push(err(SeqErrorKind::ReplicaLost, "replica failed"));
                continue;
            }
            match held_len {
                None if s.start_pos > 0 => {
                    out.push(err(SeqErrorKind::UnknownSequence, "unknown sequence"));
                    continue;
                }
                Some(n) if n != s.start_pos as usize => {
                    out.push(err(SeqErrorKind::PositionMismatch, "position mismatch"));
                    continue;
                }
                _ => {}
            }
            let used: usize = st.held.values().map(Vec::len).sum();
            if used + s.tokens.len() > st.kv_capacity {
                out.push(err(SeqErrorKind::KvExhausted, "kv exhausted"));
                continue;
            }
            let held = st.held.entry(s.seq_id).or_default();
            held.extend_from_slice(&s.tokens);
            let mut logits = fake_logits(model, held, self.vocab);
            logits.truncate(logits_len as usize);
            if nan {
                logits[3] = f32::NAN;
            }
            for &(t, v) in &st.poison {
                logits[t] = v;
            }
            st.kept_rows.remove(&s.seq_id);
            if let LogitsWire::Sparse { candidates, .. } = wire {
                let mut c = OwnedRowCertificate::default();
                if certify_row(&logits, candidates as usize, &mut c).is_ok() {
                    st.kept_rows.insert(s.seq_id, logits);
                    if bad_certificate {
                        c.outside_max = c.max;
                    }
                    out.push(SeqOutcome::Sparse(sparse_row(c)));
                    continue;
                }
            }
            let mut bytes = Vec::new();
            pack(&logits, dtype, &mut bytes);
            out.push(SeqOutcome::Logits(Bytes::from(bytes)));
        }
        let wire_bytes = out
            .iter()
            .map(|o| match o {
                SeqOutcome::Logits(b) => b.len() as u64,
                SeqOutcome::Sparse(r) => 8 * r.ids.len() as u64 + 24,
                SeqOutcome::Error { .. } => 0,
            })
            .sum();
        // The fake holds no KV: nothing is ever cached.
        Ok(StepReply { outcomes: out, forward: started.elapsed(), wire_bytes, cached_tokens: 0 })
    }

    async fn fetch_rows(
        &self,
        model: ModelIndex,
        seq_ids: Vec<u64>,
        _logits_len: u32,
        what: RowFetch,
    ) -> Result<(Vec<SeqOutcome>, u64), CallError> {
        let mut st = self.state(model);
        match &what {
            RowFetch::Rows(_) => st.fetches.push(seq_ids.clone()),
            RowFetch::Certificates { .. } => st.refines.push(seq_ids.clone()),
        }
        let held: Vec<(u64, usize)> =
            seq_ids.iter().map(|id| (*id, st.held.get(id).map_or(0, Vec::len))).collect();
        st.fetched_at.extend(held);
        if st.fail_fetches > 0 {
            st.fail_fetches -= 1;
            return Err(CallError::Transport("connection reset".into()));
        }
        let mut bytes_total = 0;
        let out = seq_ids
            .iter()
            .enumerate()
            .map(|(i, id)| match (st.kept_rows.get(id), &what) {
                (Some(row), RowFetch::Rows(dtype)) => {
                    let mut bytes = Vec::new();
                    pack(row, *dtype, &mut bytes);
                    bytes_total += bytes.len() as u64;
                    SeqOutcome::Logits(Bytes::from(bytes))
                }
                (Some(row), RowFetch::Certificates { candidates, extra_ids, .. }) => {
                    let mut c = OwnedRowCertificate::default();
                    certify_row(row, *candidates as usize, &mut c).expect("kept rows are certifiable");
                    c.add_extras(row, extra_ids.get(i).map(Vec::as_slice).unwrap_or(&[]))
                        .expect("the router asks for ids inside the row");
                    bytes_total += 8 * (c.ids.len() + c.extra_ids.len()) as u64 + 24;
                    SeqOutcome::Sparse(sparse_row(c))
                }
                (None, _) => {
                    SeqOutcome::Error { kind: SeqErrorKind::UnknownSequence, message: "no kept row".into() }
                }
            })
            .collect();
        Ok((out, bytes_total))
    }

    async fn release(&self, model: ModelIndex, seq_ids: Vec<u64>) -> Result<(), CallError> {
        let mut st = self.state(model);
        for id in seq_ids {
            st.kept_rows.remove(&id);
            st.held.remove(&id);
            st.released.push(id);
        }
        Ok(())
    }
}

/// A certificate as the gRPC layer hands it to the scheduler.
fn sparse_row(c: OwnedRowCertificate) -> SparseRow {
    SparseRow {
        ids: c.ids,
        logits: c.logits,
        max: c.max,
        log_sum: c.log_sum,
        outside_max: c.outside_max,
        tail_log_sum: c.tail_log_sum,
        extra_ids: c.extra_ids,
        extra_logits: c.extra_logits,
    }
}

/// Detokenizer of the fakes: token `id` → `<id>`; stops when the text contains `stop`.
pub struct FakeText {
    /// Stop string, if any.
    pub stop: Option<String>,
    text: String,
    emitted: usize,
}

impl FakeText {
    /// A detokenizer with an optional stop string.
    pub fn new(stop: Option<&str>) -> Box<Self> {
        Box::new(FakeText { stop: stop.map(str::to_string), text: String::new(), emitted: 0 })
    }
}

impl Detokenizer for FakeText {
    fn push(&mut self, token: u32) -> TextStep {
        self.text.push_str(&format!("<{token}>"));
        if let Some(stop) = &self.stop {
            if let Some(at) = self.text.find(stop.as_str()) {
                let text = self.text[self.emitted..at].to_string();
                self.emitted = at;
                return TextStep { text, stopped: true };
            }
        }
        let text = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        TextStep { text, stopped: false }
    }

    fn finish(&mut self) -> String {
        String::new()
    }
}

/// What generation must produce, computed directly: full-history logits each step, fused and
/// sampled with a fresh sampler for `params` (no batching, no KV, no scheduler).
pub fn reference(
    vocab: usize,
    base_prompt: &[u32],
    arms: &[(usize, f32, Vec<u32>)],
    params: SamplingParams,
    max_tokens: usize,
    eos: &[u32],
) -> Vec<u32> {
    let mut sampler = Sampler::new(params).unwrap();
    let mut generated = Vec::new();
    let mut fused = vec![0.0; vocab];
    while generated.len() < max_tokens {
        let hist = |p: &[u32]| [p, &generated[..]].concat();
        let base = fake_logits(0, &hist(base_prompt), vocab);
        let arm_logits: Vec<Vec<f32>> =
            arms.iter().map(|(m, _, p)| fake_logits(*m, &hist(p), vocab)).collect();
        let terms: Vec<ArmTerm<'_>> =
            arms.iter().zip(&arm_logits).map(|((_, a, _), l)| ArmTerm { alpha: *a, logits: l }).collect();
        fuse(&base, &terms, &mut fused).unwrap();
        let t = sampler.sample(&fused).unwrap().token;
        generated.push(t);
        if eos.contains(&t) {
            break;
        }
    }
    generated
}

/// A model entry over a fixture's tokenizer and chat template.
pub fn fixture_entry(index: usize, reward: Option<&str>, fixture: &str, max_pos: u32) -> ModelEntry {
    let dir = genarm_testkit::fixture_dir(fixture);
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let template = cfg["chat_template"].as_str().map(str::to_string);
    let text = ModelText::new(fixture, &json, template, Some(0), vec![0], false).unwrap();
    ModelEntry {
        index,
        reward_name: reward.map(str::to_string),
        model_id: fixture.into(),
        url: format!("http://127.0.0.1:{}", 1 + index),
        vocab_size: text.vocab_size() as u32,
        max_positions: max_pos,
        text: Arc::new(text),
    }
}

/// Base `llama-mha` (context `base_ctx`), reward models `harmless` (llama-gqa-tied) and
/// `helpful` (qwen2-bias); all three share one tokenizer.
pub fn fixture_catalog(base_ctx: u32) -> Catalog {
    Catalog::new(vec![
        fixture_entry(0, None, "llama-mha", base_ctx),
        fixture_entry(1, Some("harmless"), "llama-gqa-tied", 512),
        fixture_entry(2, Some("helpful"), "qwen2-bias", 512),
    ])
    .unwrap()
}
