//! Unit tests of the scheduler's batching, preemption, replay, failure and cancellation logic,
//! driven by the in-process fake backend of [`crate::testing`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use genarm_fusion::{SamplingParams, WireDtype};
use tokio::sync::{mpsc, watch};

use crate::scheduler::SchedulerError;
use crate::scheduler::{
    ArmRequest, Event, FinishReason, GenRequest, Scheduler, SchedulerConfig, SchedulerHandle, SchedulerStats,
};
use crate::testing::{reference, FakeBackend, FakeText};
use crate::workers::WorkerHealth as _;

pub(super) const V: usize = 64;
pub(super) const EOS: u32 = 0;

/// Polls `cond` until it holds, failing with `what` after 10 s (waits never sleep-then-assert).
pub(super) async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn config() -> SchedulerConfig {
    SchedulerConfig {
        vocab: V,
        eos: vec![EOS],
        max_context: 4096,
        dtype: WireDtype::F32,
        wire: crate::workers::LogitsWire::Full,
        sampling_threads: 2,
        max_batch_size: 32,
        max_batch_tokens: 4096,
        max_waiting: 64,
    }
}

pub(super) struct Harness {
    pub backend: Arc<FakeBackend>,
    pub handle: SchedulerHandle,
    pub stats: Arc<SchedulerStats>,
    _abort: watch::Sender<bool>,
}

pub(super) fn start(backend: FakeBackend, cfg: SchedulerConfig) -> Harness {
    let backend = Arc::new(backend);
    let (abort_tx, abort) = watch::channel(false);
    let (sched, handle) = Scheduler::new(Arc::clone(&backend), cfg, abort);
    let stats = sched.stats();
    tokio::spawn(sched.run());
    Harness { backend, handle, stats, _abort: abort_tx }
}

pub(super) fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..Default::default() }
}

pub(super) fn request(
    prompt: Vec<u32>,
    arms: Vec<ArmRequest>,
    sampling: SamplingParams,
    max_tokens: u32,
) -> GenRequest {
    GenRequest {
        request_id: "cmpl-test".into(),
        base_prompt: prompt,
        arms,
        sampling,
        max_tokens,
        top_logprobs: None,
        text: FakeText::new(None),
    }
}

/// Collects a request's tokens and its final event.
pub(super) async fn collect(
    rx: mpsc::UnboundedReceiver<Event>,
) -> (Vec<u32>, String, Result<FinishReason, SchedulerError>) {
    collect_after(rx, Vec::new()).await
}

/// [`collect`] after `tokens` were already read.
pub(super) async fn collect_after(
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut tokens: Vec<u32>,
) -> (Vec<u32>, String, Result<FinishReason, SchedulerError>) {
    let mut text = String::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("event within 20 s");
        match ev.expect("channel open until the last event") {
            Event::Token { token, text: t, .. } => {
                tokens.push(token);
                text.push_str(&t);
            }
            Event::Finished { reason, usage } => {
                assert_eq!(usage.completion_tokens as usize, tokens.len());
                return (tokens, text, Ok(reason));
            }
            Event::Failed(e) => return (tokens, text, Err(e)),
        }
    }
}

pub(super) fn reference_tokens(
    prompt: &[u32],
    arms: &[ArmRequest],
    params: SamplingParams,
    max_tokens: u32,
) -> Vec<u32> {
    let arms: Vec<(usize, f32, Vec<u32>)> =
        arms.iter().map(|a| (a.model, a.alpha, a.prompt.clone())).collect();
    reference(V, prompt, &arms, params, max_tokens as usize, &[EOS])
}

#[tokio::test]
async fn unguided_greedy_matches_reference_and_calls_no_arm() {
    let h = start(FakeBackend::new(3, V, 10_000), config());
    let prompt = vec![5, 6, 7];
    let rx = h.handle.submit(request(prompt.clone(), vec![], greedy(), 12)).unwrap();
    let (tokens, text, fin) = collect(rx).await;
    let want = reference_tokens(&prompt, &[], greedy(), 12);
    assert_eq!(tokens, want);
    assert_eq!(text, want.iter().filter(|&&t| t != EOS).map(|t| format!("<{t}>")).collect::<String>());
    assert_eq!(fin.unwrap(), if want.len() < 12 { FinishReason::Stop } else { FinishReason::Length });
    assert!(h.backend.state(1).steps.is_empty() && h.backend.state(2).steps.is_empty());
    wait_until("released after finishing", || h.backend.state(0).held.is_empty()).await;
}

#[tokio::test]
async fn guided_two_arms_with_own_prompts_match_reference() {
    let h = start(FakeBackend::new(3, V, 10_000), config());
    let arms = vec![
        ArmRequest { model: 1, alpha: 0.7, prompt: vec![9, 5, 6, 7] },
        ArmRequest { model: 2, alpha: -0.25, prompt: vec![5, 6, 7, 11] },
    ];
    let params = SamplingParams { temperature: 0.8, top_p: Some(0.9), top_k: Some(20), seed: 42 };
    let rx = h.handle.submit(request(vec![5, 6, 7], arms.clone(), params, 16)).unwrap();
    let (tokens, _, fin) = collect(rx).await;
    assert!(fin.is_ok());
    assert_eq!(tokens, reference_tokens(&[5, 6, 7], &arms, params, 16));
    let unguided = reference_tokens(&[5, 6, 7], &[], params, 16);
    assert_ne!(tokens, unguided, "guidance changes the output of this fake");
    // Exactly one forward per model per generated token (invariant 8).
    for m in 0..3 {
        assert_eq!(h.backend.state(m).steps.len(), tokens.len());
    }
}

#[tokio::test]
async fn seeded_output_does_not_depend_on_the_batch() {
    let h = start(FakeBackend::new(2, V, 100_000), config());
    let arms = vec![ArmRequest { model: 1, alpha: 0.5, prompt: vec![3, 4] }];
    let params = SamplingParams { temperature: 1.0, top_p: None, top_k: None, seed: 7 };
    let (alone, _, _) =
        collect(h.handle.submit(request(vec![3, 4], arms.clone(), params, 20)).unwrap()).await;

    let mut rxs = Vec::new();
    for i in 0..8u32 {
        let p = SamplingParams { seed: 100 + i as u64, ..params };
        let a = if i % 2 == 0 { arms.clone() } else { vec![] };
        rxs.push(h.handle.submit(request(vec![i + 1, 2, 3], a, p, 20)).unwrap());
    }
    let target = h.handle.submit(request(vec![3, 4], arms.clone(), params, 20)).unwrap();
    let (together, _, _) = collect(target).await;
    for rx in rxs {
        assert!(collect(rx).await.2.is_ok());
    }
    assert_eq!(alone, together);
    assert_eq!(alone, reference_tokens(&[3, 4], &arms, params, 20));
    assert!(h.stats.max_batch.load(Ordering::Relaxed) > 1, "requests were batched");
}

#[tokio::test]
async fn thirty_two_concurrent_requests_complete_in_batches() {
    let h = start(FakeBackend::new(2, V, 1_000_000), config());
    let mut rxs = Vec::new();
    for i in 0..32u32 {
        let arms =
            if i % 3 == 0 { vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![i, 1] }] } else { vec![] };
        let p = SamplingParams { seed: i as u64, ..Default::default() };
        rxs.push((i, arms.clone(), p, h.handle.submit(request(vec![i, 1], arms, p, 8)).unwrap()));
    }
    for (i, arms, p, rx) in rxs {
        let (tokens, _, fin) = collect(rx).await;
        assert!(fin.is_ok());
        assert_eq!(tokens, reference_tokens(&[i, 1], &arms, p, 8), "request {i}");
    }
    assert!(h.stats.max_batch.load(Ordering::Relaxed) > 1);
    assert!(h.stats.max_batch.load(Ordering::Relaxed) <= 32);
}

#[tokio::test]
async fn batch_size_and_prefill_budget_are_respected() {
    let mut cfg = config();
    cfg.max_batch_size = 3;
    cfg.max_batch_tokens = 10;
    let h = start(FakeBackend::new(1, V, 1_000_000), cfg);
    let mut rxs = Vec::new();
    for i in 0..6u32 {
        rxs.push(h.handle.submit(request(vec![i + 1; 4], vec![], greedy(), 5)).unwrap());
    }
    for rx in rxs {
        assert!(collect(rx).await.2.is_ok());
    }
    let st = h.backend.state(0);
    assert!(st.steps.iter().all(|s| s.len() <= 3), "batch size limit");
    for call in &st.calls {
        assert!(call.iter().map(|&(_, _, n)| n).sum::<usize>() <= 10, "token budget: {call:?}");
    }
    assert!(st.steps.iter().any(|s| s.len() > 1));
    assert_eq!(h.stats.max_batch.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn kv_exhaustion_preempts_and_replays_without_changing_outputs() {
    // 6 requests of 4 + 12 tokens need 96 tokens; the worker holds 40.
    let h = start(FakeBackend::new(2, V, 40), config());
    let mut rxs = Vec::new();
    for i in 0..6u32 {
        let arms = vec![ArmRequest { model: 1, alpha: 0.5, prompt: vec![i + 1, 2, 3, 4] }];
        let p = SamplingParams { seed: i as u64, temperature: 0.9, ..Default::default() };
        // No EOS in this test: every request grows to its full length.
        let mut r = request(vec![i + 1, 2, 3, 4], arms.clone(), p, 12);
        r.text = FakeText::new(None);
        rxs.push((i, arms, p, h.handle.submit(r).unwrap()));
    }
    for (i, arms, p, rx) in rxs {
        let (tokens, _, fin) = collect(rx).await;
        assert!(fin.is_ok(), "request {i}: {fin:?}");
        assert_eq!(tokens, reference_tokens(&[i + 1, 2, 3, 4], &arms, p, 12), "request {i}");
    }
    assert!(h.stats.preemptions.load(Ordering::Relaxed) > 0, "the pool was too small for all at once");
    wait_until("every sequence is released", || {
        h.backend.state(0).held.is_empty() && h.backend.state(1).held.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_request_too_big_for_the_kv_pool_fails_clearly() {
    let h = start(FakeBackend::new(1, V, 8), config());
    let rx = h.handle.submit(request(vec![1; 10], vec![], greedy(), 4)).unwrap();
    let (_, _, fin) = collect(rx).await;
    let err = fin.unwrap_err();
    assert!(matches!(err, SchedulerError::WorkerFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("KV"), "{err}");
    // The server keeps serving.
    let rx = h.handle.submit(request(vec![1, 2], vec![], greedy(), 3)).unwrap();
    assert!(collect(rx).await.2.is_ok());
}

#[tokio::test]
async fn a_worker_that_lost_its_sequences_is_replayed() {
    let h = start(FakeBackend::new(2, V, 10_000), config());
    let arms = vec![ArmRequest { model: 1, alpha: 1.5, prompt: vec![8, 9] }];
    let rx = h.handle.submit(request(vec![8, 9], arms.clone(), greedy(), 1000)).unwrap();
    // Let a few tokens through, then make the ARM worker forget everything (a restart).
    let mut rx = rx;
    let mut tokens = Vec::new();
    while tokens.len() < 3 {
        if let Some(Event::Token { token, .. }) = rx.recv().await {
            tokens.push(token);
        }
    }
    h.backend.state(1).forget_next = true;
    let (tokens, _, fin) = collect_after(rx, tokens).await;
    assert!(fin.is_ok());
    assert_eq!(tokens, reference_tokens(&[8, 9], &arms, greedy(), 1000));
    assert!(h.stats.replays.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn a_sequence_whose_replica_failed_is_replayed_without_advancing_the_sampler() {
    let h = start(FakeBackend::new(2, V, 10_000), config());
    let arms = vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![5, 6, 7] }];
    // A seed whose sampled continuation is long enough to be interrupted.
    let params = (0..200u64)
        .map(|seed| SamplingParams { temperature: 1.0, top_p: None, top_k: None, seed })
        .find(|p| reference_tokens(&[5, 6], &arms, *p, 40).len() >= 12)
        .expect("a seed with a long continuation");
    let mut rx = h.handle.submit(request(vec![5, 6], arms.clone(), params, 40)).unwrap();
    let mut tokens = Vec::new();
    while tokens.len() < 5 {
        match rx.recv().await {
            Some(Event::Token { token, .. }) => tokens.push(token),
            other => panic!("the request ended early: {:?}", other.is_some()),
        }
    }
    h.backend.state(1).lose_next = true;
    let (tokens, _, fin) = collect_after(rx, tokens).await;
    assert!(fin.is_ok());
    assert_eq!(tokens, reference_tokens(&[5, 6], &arms, params, 40));
    assert!(h.stats.replays.load(Ordering::Relaxed) >= 1, "the lost sequence was replayed");
}

#[tokio::test]
async fn a_failing_arm_fails_only_the_requests_that_use_it() {
    let mut backend = FakeBackend::new(2, V, 10_000);
    backend.delay = Duration::from_millis(5);
    let h = start(backend, config());
    let arms = vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1, 2] }];
    let guided = h.handle.submit(request(vec![1, 2], arms, greedy(), 1000)).unwrap();
    let unguided = h.handle.submit(request(vec![1, 2], vec![], greedy(), 30)).unwrap();
    wait_until("the guided request is running", || !h.backend.state(1).steps.is_empty()).await;
    h.backend.state(1).fail_calls = 1;
    let (_, _, fin) = collect(guided).await;
    match fin {
        Err(SchedulerError::WorkerFailed { worker, message }) => {
            assert!(worker.contains("arm1"), "{worker}");
            assert!(message.contains("connection refused"));
        }
        other => panic!("{other:?}"),
    }
    let (tokens, _, fin) = collect(unguided).await;
    assert!(fin.is_ok());
    assert_eq!(tokens, reference_tokens(&[1, 2], &[], greedy(), 30));
    assert!(!h.backend.models[1].ready.load(Ordering::SeqCst), "marked not ready");
    wait_until("the failed request is released on the base", || h.backend.state(0).held.is_empty()).await;
    // While the ARM is not ready, requests for it fail at once; others work.
    let rx = h.handle.submit(request(
        vec![1],
        vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1] }],
        greedy(),
        3,
    ));
    assert!(matches!(collect(rx.unwrap()).await.2, Err(SchedulerError::WorkerNotReady { .. })));
}

#[tokio::test]
async fn non_finite_logits_fail_the_request_naming_the_worker() {
    let h = start(FakeBackend::new(2, V, 10_000), config());
    h.backend.state(1).nan_next = true;
    let arms = vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1, 2] }];
    let (_, _, fin) = collect(h.handle.submit(request(vec![1, 2], arms, greedy(), 5)).unwrap()).await;
    let err = fin.unwrap_err();
    assert!(err.to_string().contains("arm1") && err.to_string().contains("non-finite"), "{err}");
}

#[tokio::test]
async fn positive_infinity_fails_naming_the_worker_and_negative_infinity_is_a_legal_mask() {
    let h = start(FakeBackend::new(3, V, 10_000), config());
    let arms = |m: usize| vec![ArmRequest { model: m, alpha: 1.0, prompt: vec![1, 2] }];
    // +inf from arm2: the request fails before sampling, naming arm2 (not the base, not arm1).
    h.backend.state(2).poison = vec![(5, f32::INFINITY)];
    let (tokens, _, fin) = collect(h.handle.submit(request(vec![1, 2], arms(2), greedy(), 5)).unwrap()).await;
    let err = fin.unwrap_err();
    assert!(tokens.is_empty(), "nothing may be sampled from +inf logits: {tokens:?}");
    let msg = err.to_string();
    assert!(msg.contains("arm2") && msg.contains("+inf") && msg.contains("token 5"), "{msg}");
    assert!(!msg.contains("arm1") && !msg.contains("base"), "{msg}");
    // NaN from the base names the base.
    h.backend.state(0).poison = vec![(7, f32::NAN)];
    let (_, _, fin) = collect(h.handle.submit(request(vec![1, 2], vec![], greedy(), 5)).unwrap()).await;
    let msg = fin.unwrap_err().to_string();
    assert!(msg.contains("base") && msg.contains("NaN"), "{msg}");
    h.backend.state(0).poison.clear();
    // -inf masks a token of arm1: legal. Masking the token greedy decoding picks first makes
    // the request pick another one, and succeed.
    let (plain, _, fin) = collect(h.handle.submit(request(vec![1, 2], arms(1), greedy(), 6)).unwrap()).await;
    assert!(fin.is_ok(), "{fin:?}");
    let first = plain[0] as usize;
    h.backend.state(1).poison = vec![(first, f32::NEG_INFINITY)];
    let (tokens, _, fin) = collect(h.handle.submit(request(vec![1, 2], arms(1), greedy(), 6)).unwrap()).await;
    assert!(fin.is_ok(), "a -inf logit must not fail the request: {fin:?}");
    assert_eq!(tokens.len(), 6);
    assert_ne!(tokens[0] as usize, first, "the masked id was sampled: {tokens:?}");
    // Nothing is left on any worker.
    wait_until("no worker holds a sequence", || (0..3).all(|m| h.backend.state(m).held.is_empty())).await;
}

#[tokio::test]
async fn a_client_that_goes_away_is_released_everywhere() {
    let h = start(FakeBackend::new(2, V, 10_000), config());
    let arms = vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1, 2] }];
    let mut rx = h.handle.submit(request(vec![1, 2], arms, greedy(), 100_000)).unwrap();
    let mut n = 0;
    while n < 2 {
        if let Some(Event::Token { .. }) = rx.recv().await {
            n += 1;
        }
    }
    drop(rx);
    wait_until("the cancelled request is released everywhere", || {
        h.backend.state(0).held.is_empty() && h.backend.state(1).held.is_empty()
    })
    .await;
    let steps = h.backend.state(0).steps.len();
    // An absence: no step may come for it during a while (this cannot pass by luck if one does).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.backend.state(0).steps.len(), steps, "no more steps for it");
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_at_once() {
    let backend = Arc::new(FakeBackend::new(1, V, 10_000));
    let (_abort_tx, abort) = watch::channel(false);
    let mut cfg = config();
    cfg.max_waiting = 2;
    // The actor is not running: nothing leaves the queue.
    let (_sched, handle) = Scheduler::new(backend, cfg, abort);
    let _a = handle.submit(request(vec![1], vec![], greedy(), 1)).unwrap();
    let _b = handle.submit(request(vec![1], vec![], greedy(), 1)).unwrap();
    assert_eq!(handle.waiting(), 2);
    match handle.submit(request(vec![1], vec![], greedy(), 1)) {
        Err(SchedulerError::Overloaded { waiting: 2 }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn stop_strings_end_generation_without_the_stop_text() {
    let h = start(FakeBackend::new(1, V, 10_000), config());
    let want = reference_tokens(&[4, 4], &[], greedy(), 6);
    let stop = format!("<{}>", want[2]);
    let mut r = request(vec![4, 4], vec![], greedy(), 6);
    r.text = FakeText::new(Some(&stop));
    let (tokens, text, fin) = collect(h.handle.submit(r).unwrap()).await;
    assert_eq!(fin.unwrap(), FinishReason::Stop);
    let first = want.iter().position(|t| format!("<{t}>") == stop).unwrap();
    assert_eq!(tokens, want[..=first]);
    assert!(!text.contains(&stop));
}

#[tokio::test]
async fn logprobs_are_reported_when_asked() {
    let h = start(FakeBackend::new(1, V, 10_000), config());
    let mut r = request(vec![4, 5], vec![], greedy(), 3);
    r.top_logprobs = Some(3);
    let mut rx = h.handle.submit(r).unwrap();
    match rx.recv().await.unwrap() {
        Event::Token { token, logprob, top, .. } => {
            assert_eq!(top.len(), 3);
            assert_eq!(top[0].0, token, "greedy picks the most likely");
            assert!(logprob.unwrap() <= 0.0);
            assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn abort_fails_everything_and_releases() {
    let backend = Arc::new(FakeBackend::new(1, V, 10_000));
    let (abort_tx, abort) = watch::channel(false);
    let (sched, handle) = Scheduler::new(Arc::clone(&backend), config(), abort);
    tokio::spawn(sched.run());
    let mut rx = handle.submit(request(vec![1, 2], vec![], greedy(), 100_000)).unwrap();
    rx.recv().await.unwrap();
    abort_tx.send(true).unwrap();
    let (_, _, fin) = collect(rx).await;
    assert!(matches!(fin, Err(SchedulerError::ShuttingDown)));
    wait_until("the aborted request is released", || backend.state(0).held.is_empty()).await;
}

fn start_with_grace(backend: FakeBackend, cfg: SchedulerConfig, grace: Duration) -> Harness {
    let backend = Arc::new(backend);
    let (abort_tx, abort) = watch::channel(false);
    let (sched, handle) = Scheduler::new(Arc::clone(&backend), cfg, abort);
    let sched = sched.with_restart_grace(grace);
    let stats = sched.stats();
    tokio::spawn(sched.run());
    Harness { backend, handle, stats, _abort: abort_tx }
}

#[tokio::test]
async fn within_the_restart_grace_a_request_waits_for_its_worker_and_replays() {
    let mut backend = FakeBackend::new(2, V, 10_000);
    backend.delay = Duration::from_millis(2);
    let h = start_with_grace(backend, config(), Duration::from_secs(10));
    let arms = vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![5, 6, 7] }];
    let params = (0..200u64)
        .map(|seed| SamplingParams { temperature: 1.0, top_p: None, top_k: None, seed })
        .find(|p| reference_tokens(&[5, 6], &arms, *p, 40).len() >= 12)
        .expect("a seed with a long continuation");
    let want = reference_tokens(&[5, 6], &arms, params, 40);
    let mut rx = h.handle.submit(request(vec![5, 6], arms.clone(), params, 40)).unwrap();
    let mut tokens = Vec::new();
    while tokens.len() < 3 {
        match rx.recv().await {
            Some(Event::Token { token, .. }) => tokens.push(token),
            other => panic!("the request ended early: {:?}", other.is_some()),
        }
    }
    // The ARM's only worker dies (its KV is lost) and comes back 200 ms later.
    {
        let mut st = h.backend.state(1);
        st.fail_calls = 1;
        st.forget_next = true;
    }
    // Meanwhile an unguided request is served.
    let plain = h.handle.submit(request(vec![1, 2], vec![], greedy(), 5)).unwrap();
    let backend = Arc::clone(&h.backend);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        backend.models[1].ready.store(true, Ordering::SeqCst);
    });
    let (_, _, fin) = collect_after(plain, Vec::new()).await;
    assert!(fin.is_ok(), "the unguided request should not wait: {fin:?}");
    let (tokens, _, fin) = collect_after(rx, tokens).await;
    assert!(fin.is_ok(), "{fin:?}");
    assert_eq!(tokens, want);
    assert!(h.stats.replays.load(Ordering::Relaxed) >= 1, "the sequence was replayed");
}

#[tokio::test]
async fn past_the_restart_grace_a_request_fails_naming_the_worker() {
    let mut backend = FakeBackend::new(2, V, 10_000);
    backend.delay = Duration::from_millis(2);
    let h = start_with_grace(backend, config(), Duration::from_millis(100));
    let arms = vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![1, 2] }];
    let rx = h.handle.submit(request(vec![1, 2], arms, greedy(), 1000)).unwrap();
    wait_until("the guided request is running", || !h.backend.state(1).steps.is_empty()).await;
    h.backend.state(1).fail_calls = 1;
    let (_, _, fin) = collect_after(rx, Vec::new()).await;
    let err = fin.expect_err("the request should fail past the grace period");
    assert!(matches!(err, SchedulerError::WorkerFailed { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("grace period of 0.1 s"), "{message}");
    assert!(message.contains(&h.backend.display_name(1)), "{message}");
}

#[test]
fn every_router_starts_its_sequence_ids_at_its_own_random_point() {
    let starts: std::collections::HashSet<u64> = (0..64).map(|_| crate::scheduler::first_seq_id()).collect();
    assert_eq!(starts.len(), 64, "two routers would share sequence ids");
    // Far below the workers' reserved warm-up id (u64::MAX), with room to count up.
    assert!(starts.iter().all(|&s| (1..1 << 62).contains(&s)), "{starts:?}");
}
