//! The sparse logits wire in the scheduler against the full wire, on the in-process fake
//! backend: identical tokens and log-probabilities for every sampling mode, guided or not, with
//! refined certificates and fallbacks to fetched rows (negative weights, `top_logprobs`,
//! uncertified draws), a fetch that fails (replayed, nothing lost), a worker whose row cannot be
//! certified, and chunked prefill (rows fetched only at a sequence's full length).

use std::sync::Arc;
use std::time::Duration;

use genarm_fusion::{SamplingParams, WireDtype};
use tokio::sync::{mpsc, watch};

use crate::scheduler::{ArmRequest, Event, GenRequest, Scheduler, SchedulerConfig, SchedulerHandle};
use crate::testing::{FakeBackend, FakeText};
use crate::workers::LogitsWire;

const V: usize = 256;

fn config(wire: LogitsWire) -> SchedulerConfig {
    SchedulerConfig {
        vocab: V,
        eos: vec![0],
        max_context: 4096,
        dtype: WireDtype::F32,
        wire,
        sampling_threads: 2,
        max_batch_size: 32,
        max_batch_tokens: 4096,
        max_waiting: 64,
    }
}

fn start(wire: LogitsWire) -> (Arc<FakeBackend>, SchedulerHandle, watch::Sender<bool>) {
    start_with(config(wire))
}

fn start_with(cfg: SchedulerConfig) -> (Arc<FakeBackend>, SchedulerHandle, watch::Sender<bool>) {
    let backend = Arc::new(FakeBackend::new(3, V, 100_000));
    let (abort_tx, abort) = watch::channel(false);
    let (sched, handle) = Scheduler::new(Arc::clone(&backend), cfg, abort);
    tokio::spawn(sched.run());
    (backend, handle, abort_tx)
}

/// Every token event's (token, logprob bits, top list) and whether the request finished.
type Stream = (Vec<(u32, Option<u32>, Vec<(u32, u32)>)>, Result<(), String>);

async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Stream {
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("event within 20 s");
        match ev.expect("channel open until the last event") {
            Event::Token { token, logprob, top, .. } => out.push((
                token,
                logprob.map(f32::to_bits),
                top.iter().map(|&(t, l)| (t, l.to_bits())).collect(),
            )),
            Event::Finished { .. } => return (out, Ok(())),
            Event::Failed(e) => return (out, Err(e.to_string())),
        }
    }
}

/// A request's base prompt, ARMs, sampling parameters and `top_logprobs`.
type Request = (Vec<u32>, Vec<ArmRequest>, SamplingParams, Option<usize>);

/// The request mix: every sampling mode, 0 to 2 ARMs, one negative weight, logprobs.
fn requests() -> Vec<Request> {
    let mut out = Vec::new();
    let modes = [
        SamplingParams { temperature: 0.0, ..Default::default() },
        SamplingParams { temperature: 0.7, top_p: Some(0.9), ..Default::default() },
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.8, top_k: Some(5), ..Default::default() },
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        for n_arms in 0..3usize {
            for logprobs in [None, Some(0), Some(3)] {
                let seed = (i * 10 + n_arms) as u64;
                let arms = (0..n_arms)
                    .map(|a| ArmRequest {
                        model: a + 1,
                        alpha: [1.5, 0.5][a],
                        prompt: vec![9, a as u32 + 3, 4],
                    })
                    .collect();
                out.push((vec![3, 4, seed as u32 + 10], arms, SamplingParams { seed, ..mode }, logprobs));
            }
        }
    }
    out.push((
        vec![7, 7],
        vec![ArmRequest { model: 1, alpha: -0.5, prompt: vec![7] }],
        SamplingParams { temperature: 0.7, top_p: Some(0.9), seed: 5, ..Default::default() },
        None,
    ));
    out
}

async fn run_all(handle: &SchedulerHandle) -> Vec<Stream> {
    run_requests(handle, requests()).await
}

/// Submits `requests` at once and collects their streams in order.
async fn run_requests(handle: &SchedulerHandle, requests: Vec<Request>) -> Vec<Stream> {
    let rxs: Vec<_> = requests
        .into_iter()
        .map(|(prompt, arms, sampling, top_logprobs)| {
            let r = GenRequest {
                request_id: "cmpl-sparse".into(),
                base_prompt: prompt,
                arms,
                sampling,
                max_tokens: 24,
                top_logprobs,
                text: FakeText::new(None),
            };
            handle.submit(r).unwrap()
        })
        .collect();
    let mut out = Vec::new();
    for rx in rxs {
        out.push(collect(rx).await);
    }
    out
}

#[tokio::test]
async fn the_sparse_wire_streams_exactly_what_the_full_wire_streams() {
    let (_full_backend, full, _a) = start(LogitsWire::Full);
    let want = run_all(&full).await;
    // The fake's rows are flat (uniform over a grid), the hardest case for certificates: a
    // quarter of the vocabulary per certificate leaves a tail the bounds can still handle.
    let (backend, sparse, _b) = start(LogitsWire::Sparse { candidates: 64, refine: 0 });
    let got = run_all(&sparse).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(w.1.is_ok(), "request {i} failed on the full wire: {:?}", w.1);
        assert_eq!(g, w, "request {i}: {:?}", requests()[i].2);
    }
    // Both paths ran: some tokens certified (at least the greedy ones without logprobs), others
    // fetched (logprobs, negative weight, and draws the flat rows leave unproven).
    let steps: usize = backend.state(0).steps.iter().map(Vec::len).sum();
    let fetched: usize = backend.state(0).fetches.iter().map(Vec::len).sum();
    assert!(fetched > 0, "no row was ever fetched");
    assert!(steps - fetched >= 48, "{fetched} of {steps} base rows fetched: too few certified");
    assert!(backend.state(0).refines.is_empty(), "refine 0 never asks for refined certificates");

    // With refined certificates first: the same streams, fewer whole rows. The first fetch of
    // the first ARM fails (its sequences are replayed, nothing lost).
    let (refining, sparse, _c) = start(LogitsWire::Sparse { candidates: 64, refine: 160 });
    refining.state(1).fail_fetches = 1;
    let got = run_all(&sparse).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "refined, request {i}: {:?}", requests()[i].2);
    }
    let refined: usize = refining.state(0).refines.iter().map(Vec::len).sum();
    let whole: usize = refining.state(0).fetches.iter().map(Vec::len).sum();
    assert!(refined > 0, "no certificate was refined");
    assert!(whole < fetched, "refining fetched {whole} whole rows, without it {fetched}");
    assert_eq!(refining.state(1).fail_fetches, 0, "the failure was injected and met");
}

#[tokio::test]
async fn the_sparse_wire_is_exact_whatever_the_logits_dtype() {
    // `--logits-dtype bf16` rounds full-wire rows; the sparse wire's certificates are f32 and so
    // are the rows it fetches, so its streams are the full f32 wire's, bit for bit.
    let (_fb, full, _a) = start(LogitsWire::Full);
    let want = run_all(&full).await;
    let (_rb, rounded, _b) =
        start_with(SchedulerConfig { dtype: WireDtype::Bf16, ..config(LogitsWire::Full) });
    let rounded = run_all(&rounded).await;
    assert_ne!(rounded, want, "bf16 rows must change some stream, or this test proves nothing");
    let (backend, sparse, _c) = start_with(SchedulerConfig {
        dtype: WireDtype::Bf16,
        ..config(LogitsWire::Sparse { candidates: 64, refine: 0 })
    });
    assert_eq!(run_all(&sparse).await, want);
    assert!(backend.state(0).fetches.iter().map(Vec::len).sum::<usize>() > 0, "some rows were fetched");
}

#[tokio::test]
async fn a_failed_row_fetch_replays_the_sequence_and_loses_nothing() {
    let (_fb, full, _a) = start(LogitsWire::Full);
    let (backend, sparse, _b) = start(LogitsWire::Sparse { candidates: 8, refine: 0 });
    // top_logprobs always needs the full rows: the first fetch of the base fails.
    backend.state(0).fail_fetches = 1;
    let req = |h: &SchedulerHandle| {
        h.submit(GenRequest {
            request_id: "cmpl-fetch".into(),
            base_prompt: vec![1, 2, 3],
            arms: vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1, 2] }],
            sampling: SamplingParams { temperature: 0.7, seed: 9, ..Default::default() },
            max_tokens: 10,
            top_logprobs: Some(2),
            text: FakeText::new(None),
        })
        .unwrap()
    };
    let want = collect(req(&full)).await;
    let got = collect(req(&sparse)).await;
    assert!(want.1.is_ok());
    assert_eq!(got, want);
    assert_eq!(backend.state(0).fail_fetches, 0, "the failure was injected and met");
}

#[tokio::test]
async fn a_row_the_worker_could_not_certify_fails_as_on_the_full_wire() {
    for wire in [LogitsWire::Full, LogitsWire::Sparse { candidates: 8, refine: 0 }] {
        let (backend, handle, _a) = start(wire);
        backend.state(1).nan_next = true;
        let rx = handle
            .submit(GenRequest {
                request_id: "cmpl-nan".into(),
                base_prompt: vec![1, 2],
                arms: vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1, 2] }],
                sampling: SamplingParams { temperature: 0.0, ..Default::default() },
                max_tokens: 5,
                top_logprobs: None,
                text: FakeText::new(None),
            })
            .unwrap();
        let err = collect(rx).await.1.unwrap_err();
        assert!(err.contains("arm1") && err.contains("non-finite"), "{wire:?}: {err}");
    }
}

#[tokio::test]
async fn an_inconsistent_certificate_fails_only_the_requests_that_used_it_naming_the_worker() {
    let (backend, handle, _a) = start(LogitsWire::Sparse { candidates: 8, refine: 0 });
    let submit = |arms: Vec<ArmRequest>| {
        handle
            .submit(GenRequest {
                request_id: "cmpl-bad".into(),
                base_prompt: vec![1, 2],
                arms,
                sampling: SamplingParams { temperature: 0.0, ..Default::default() },
                max_tokens: 6,
                top_logprobs: None,
                text: FakeText::new(None),
            })
            .unwrap()
    };
    // Warm both requests up to a running state, then arm 2 lies once.
    backend.state(2).bad_certificate_next = true;
    let with_bad = submit(vec![ArmRequest { model: 2, alpha: 1.0, prompt: vec![1] }]);
    let without = submit(vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1] }]);
    let err = collect(with_bad).await.1.unwrap_err();
    assert!(err.contains("arm2") && err.contains("inconsistent"), "{err}");
    let ok = collect(without).await;
    assert!(ok.1.is_ok(), "the request that did not use arm2 failed: {:?}", ok.1);
    assert_eq!(ok.0.len(), 6);
}

/// Prompt lengths of [`long_requests`] per model (base, first ARM, second ARM): each longer than
/// the budget of the chunked test, and different, as each model renders its own.
const LONG_PROMPTS: [usize; 3] = [30, 26, 34];

/// [`requests`] with every prompt [`LONG_PROMPTS`] long.
fn long_requests() -> Vec<Request> {
    let long = |len: usize, salt: u32| -> Vec<u32> {
        (0..len as u32).map(|i| 1 + (i * 11 + salt * 17) % (V as u32 - 1)).collect()
    };
    requests()
        .into_iter()
        .enumerate()
        .map(|(i, (_, arms, sampling, top))| {
            let arms = arms
                .into_iter()
                .map(|a| ArmRequest { prompt: long(LONG_PROMPTS[a.model], 100 + i as u32), ..a })
                .collect();
            (long(LONG_PROMPTS[0], i as u32), arms, sampling, top)
        })
        .collect()
}

#[tokio::test]
async fn chunked_prefill_on_the_sparse_wire_streams_what_whole_prefill_streams_on_the_full_wire() {
    let (_full_backend, full, _a) = start(LogitsWire::Full);
    let want = run_requests(&full, long_requests()).await;
    let mut cfg = config(LogitsWire::Sparse { candidates: 64, refine: 160 });
    cfg.max_batch_tokens = 16;
    let (backend, sparse, _b) = start_with(cfg);
    let got = run_requests(&sparse, long_requests()).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(w.1.is_ok(), "request {i} failed on the full wire: {:?}", w.1);
        assert_eq!(g, w, "request {i}: {:?}", long_requests()[i].2);
    }
    let chunked =
        backend.state(0).calls.iter().flatten().any(|&(_, start, n)| start == 0 && n < LONG_PROMPTS[0]);
    assert!(chunked, "no base prompt was chunked");
    // Rows and refined certificates are fetched only for sequences that sample in that step: at
    // their full length (at least the prompt), never at an intermediate chunk.
    assert!(!backend.state(0).fetched_at.is_empty(), "nothing was fetched");
    for (m, &len) in LONG_PROMPTS.iter().enumerate() {
        for &(id, held) in &backend.state(m).fetched_at {
            assert!(
                held >= len,
                "model {m}: sequence {id} fetched holding {held} of its {len} prompt tokens"
            );
        }
    }
}
