//! Fault injection between the router and an rm-worker, with real processes: a worker that
//! answers slowly, answers garbage (NaN, +∞, one logit short), loses the connection mid-step,
//! never answers (the router's `--step-timeout-secs` watchdog), or is paused with SIGSTOP. Each
//! ends with the affected request failed with an error naming the worker, or completed by
//! replay with the output of an undisturbed run; the other requests unaffected; the router
//! serving; no KV left on any worker. The faults come from `genarm-fault-proxy` (see
//! `genarm_testkit::fault`).

mod common;
mod fault_common;

use std::time::{Duration, Instant};

use common::*;
use fault_common::*;

/// Asserts that `r` is a 503 naming the rm-worker, with every one of `words`.
fn assert_worker_error(r: &Response, words: &[&str], what: &str) {
    let mut all = vec![ARM_NAME, ARM];
    all.extend_from_slice(words);
    assert_error(r, 503, &all, what);
}

#[test]
fn a_slow_worker_slows_requests_without_changing_them() {
    let _serial = serial();
    let c = FaultCluster::start(true, &["--worker-reprobe-ms", "200", "--step-timeout-secs", "5"], &[]);
    let (guided_want, plain_want) = (c.reference(true, 8), c.reference(false, 8));
    c.proxy().set("delay 150");
    let started = Instant::now();
    // An unguided request runs alongside (in the same batches): slowed, not changed.
    let plain = std::thread::scope(|s| {
        let plain = s.spawn(|| c.complete(false, 8));
        assert_eq!(c.complete(true, 8), guided_want, "the guided request through the slow worker");
        plain.join().unwrap()
    });
    let took = started.elapsed();
    assert_eq!(plain, plain_want, "the unguided request");
    // 8 tokens = 8 steps of the rm-worker, each answered after 150 ms.
    assert!(took >= Duration::from_millis(8 * 150), "the delay was not injected ({took:?})\n{}", c.logs());
    assert!(c.proxy().process.log_tail(400).contains("injecting Delay(150)"), "{}", c.logs());
    c.proxy().set("none");
    c.assert_recovered(Duration::from_secs(5));
}

#[test]
fn garbage_logits_fail_the_request_naming_the_worker() {
    let _serial = serial();
    // Full rows (NaN, +inf, one logit short) and the sparse wire's certificates (a candidate's
    // value NaN or +inf, one value short).
    for (wire, garbage) in [
        ("full", [("nan", &["non-finite"][..]), ("posinf", &["non-finite"][..]), ("short", &["logits"][..])]),
        (
            "sparse",
            [
                ("nan", &["certificate", "NaN"][..]),
                ("posinf", &["certificate"][..]),
                ("short", &["certificate"][..]),
            ],
        ),
    ] {
        let c = FaultCluster::start(true, &["--worker-reprobe-ms", "200", "--logits-wire", wire], &[]);
        let plain_want = c.reference(false, 8);
        for (fault, words) in garbage {
            c.proxy().set(fault);
            // Non-streamed: the whole request fails with a 503 naming the worker.
            let r = c.post(true, 8);
            assert_worker_error(&r, words, &format!("`{fault}` logits on the {wire} wire, non-streamed"));
            // Streamed, after some tokens: an error event naming the worker ends the stream.
            c.proxy().set("none");
            let (s, _) = c.open_stream(true, 200, 2);
            c.proxy().set(fault);
            let (_, errors, _) = drain(s);
            assert_eq!(errors.len(), 1, "`{fault}` ({wire} wire): one error event\n{}", c.logs());
            let message = errors[0]["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(ARM_NAME) && message.contains(ARM),
                "`{fault}` ({wire} wire): {message}"
            );
            // The others are unaffected even while the worker sends garbage.
            assert_eq!(
                c.complete(false, 8),
                plain_want,
                "an unguided request during `{fault}` ({wire} wire)"
            );
            c.proxy().set("none");
            c.assert_recovered(Duration::from_secs(5));
        }
    }
}

#[test]
fn garbage_in_half_precision_logits_is_caught_too() {
    let _serial = serial();
    // The proxy writes NaN / +inf in the wire dtype the router asked for (bf16, f16); only the
    // full wire sends half-precision rows (the sparse wire is f32 throughout).
    for dtype in ["bf16", "f16"] {
        let c = FaultCluster::start(
            true,
            &["--worker-reprobe-ms", "200", "--logits-dtype", dtype, "--logits-wire", "full"],
            &[],
        );
        for (fault, word) in [("nan", "non-finite"), ("posinf", "non-finite"), ("short", "logits")] {
            c.proxy().set(fault);
            let r = c.post(true, 8);
            assert_worker_error(&r, &[word], &format!("`{fault}` in {dtype} logits"));
            let r = c.post(false, 8);
            assert_eq!(r.status, 200, "an unguided request during `{fault}` ({dtype}): {}", r.text());
            c.proxy().set("none");
            // Half-precision logits may round a near-tie differently from the f32 reference: the
            // fresh requests must succeed, not match it.
            c.wait_ready(Duration::from_secs(5));
            for guided in [false, true] {
                let r = c.post(guided, 6);
                assert_eq!(r.status, 200, "{dtype}, guided={guided}, after `{fault}`: {}", r.text());
            }
            c.assert_no_kv(Duration::from_secs(5));
        }
    }
}

#[test]
fn a_connection_lost_mid_step_is_replayed_with_identical_output() {
    let _serial = serial();
    let c = FaultCluster::start(
        true,
        &["--worker-reprobe-ms", "200", "--worker-restart-grace-secs", "20", "--step-timeout-secs", "5"],
        &[],
    );
    let want = c.reference(true, 24);
    let replays_before = c.metric("genarm_replays_total");
    c.proxy().set("delay 20");
    let (s, head) = c.open_stream(true, 24, 3);
    // The next Step reaches the worker (its KV advances), then the call fails.
    c.proxy().set("close *1");
    let (tail, errors, done) = drain(s);
    assert!(
        errors.is_empty() && done,
        "the request should be replayed, not failed: {errors:?}\n{}",
        c.logs()
    );
    assert_eq!(head + &tail, want, "the replayed request's output differs from an undisturbed run");
    assert!(c.proxy().process.log_tail(400).contains("injecting Close"), "{}", c.logs());
    assert!(c.metric("genarm_replays_total") > replays_before, "no replay was counted\n{}", c.logs());
    c.proxy().set("none");
    c.assert_recovered(Duration::from_secs(5));
}

#[test]
fn a_hung_or_lost_worker_fails_its_requests_without_a_restart_grace() {
    let _serial = serial();
    let c = FaultCluster::start(
        true,
        &["--worker-reprobe-ms", "200", "--worker-restart-grace-secs", "0", "--step-timeout-secs", "1"],
        &[],
    );
    let plain_want = c.reference(false, 8);

    // Hang after a few tokens: the watchdog fails the request, naming the worker and the flag.
    let (s, _) = c.open_stream(true, 200, 3);
    c.proxy().set("hang");
    let started = Instant::now();
    let (_, errors, _) = drain(s);
    let took = started.elapsed();
    assert_eq!(errors.len(), 1, "one error event\n{}", c.logs());
    let message = errors[0]["error"]["message"].as_str().unwrap_or_default();
    for word in [ARM_NAME, ARM, "--step-timeout-secs"] {
        assert!(message.contains(word), "the error should name {word}: {message}");
    }
    assert!(took < Duration::from_secs(10), "the hung step was failed after {took:?}, watchdog 1 s");
    // Unguided requests are served while the worker hangs (they wait one watchdog period at most).
    assert_eq!(c.complete(false, 8), plain_want, "an unguided request while the worker hangs");
    // A new guided request fails too (by the watchdog, or at once while the worker is marked
    // down), naming the worker.
    let r = c.post(true, 4);
    assert_error(&r, 503, &[ARM_NAME], "a guided request while the worker hangs");
    c.proxy().set("none");
    c.assert_recovered(Duration::from_secs(10));

    // Connection lost mid-step: fails at once, naming the worker; the KV the worker kept for
    // the failed call is released when it answers again.
    let (s, _) = c.open_stream(true, 200, 3);
    c.proxy().set("close");
    let (_, errors, _) = drain(s);
    assert_eq!(errors.len(), 1, "one error event\n{}", c.logs());
    let message = errors[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(ARM_NAME) && message.contains(ARM), "{message}");
    assert_eq!(c.complete(false, 8), plain_want, "an unguided request while the connection fails");
    c.proxy().set("none");
    c.assert_recovered(Duration::from_secs(10));
}

#[test]
fn a_worker_paused_with_sigstop_is_waited_for_and_replayed() {
    let _serial = serial();
    let mut c = FaultCluster::start(
        false,
        &["--worker-reprobe-ms", "200", "--worker-restart-grace-secs", "20", "--step-timeout-secs", "1"],
        &[],
    );
    let (want, plain_want) = (c.reference(true, 60), c.reference(false, 8));
    let (s, head) = c.open_stream(true, 60, 3);
    c.arm.signal_group(libc::SIGSTOP);
    let paused = Instant::now();
    // While it is stopped: the watchdog fires (the router marks it not ready), the guided request
    // waits; unguided ones are served.
    assert!(
        poll_until(Duration::from_secs(20), || http::get(&c.url("/ready")).is_ok_and(|r| r.status == 503)),
        "/ready should answer 503 while the rm-worker is stopped"
    );
    assert_eq!(c.complete(false, 8), plain_want, "an unguided request while the rm-worker is stopped");
    // Not a wait for something to happen (the polls above did that): the pause itself lasts at
    // least 3 s, three step timeouts, whatever the machine's speed, before the worker resumes.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed()));
    c.arm.signal_group(libc::SIGCONT);
    let (tail, errors, done) = drain(s);
    assert!(
        errors.is_empty() && done,
        "the paused request should resume by replay: {errors:?}\n{}",
        c.logs()
    );
    assert_eq!(head + &tail, want, "the replayed request's output differs from an undisturbed run");
    assert!(
        c.router.log_tail(400).contains("--step-timeout-secs"),
        "the watchdog did not fire\n{}",
        c.logs()
    );
    c.assert_recovered(Duration::from_secs(10));
}
