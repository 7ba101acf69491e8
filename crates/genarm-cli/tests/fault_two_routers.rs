//! Two routers stepping the same workers at once, as during a rolling update (the old router
//! drains while the new one serves): each router's sequences keep their own KV on the
//! workers, so every request of either router decodes exactly its own prompt. With sequence
//! ids counted from 1 in every router, the two would address the same worker sequences.
//! Real processes on loopback.

mod common;
mod fault_common;

use std::sync::Barrier;

use common::*;
use fault_common::*;

/// Candidate prompts; the test uses the largest group of them with one token length, so that
/// colliding sequences would also agree on positions.
const PROMPTS: [&str; 8] = [
    "Once upon a time",
    "The cat sat down",
    "A dog ran far away",
    "We went to the sea",
    "It was a dark night",
    "She read a book",
    "He ran to the store",
    "Rain fell on the roof",
];

#[test]
fn two_routers_on_the_same_workers_never_mix_their_sequences() {
    let _serial = serial();
    let c = FaultCluster::start(false, &[], &[]);
    let (_second, second_url) = spawn_router(0, &c.base_url, &c.arm_url, &[]);
    let ok = poll_until(std::time::Duration::from_secs(60), || {
        http::get(&format!("{second_url}/ready")).is_ok_and(|r| r.status == 200)
    });
    assert!(ok, "the second router did not become ready\n{}", c.logs());

    let (base, arm) = &c.refs;
    let mut by_len = std::collections::BTreeMap::<usize, Vec<&str>>::new();
    for p in PROMPTS {
        by_len.entry(base.encode(p).len()).or_default().push(p);
    }
    let prompts = by_len.into_values().max_by_key(Vec::len).unwrap();
    assert!(prompts.len() >= 2, "need two prompts of one length: {:?}", PROMPTS.map(|p| base.encode(p)));
    const TOKENS: usize = 24;
    let reference = |prompt: &str, guided: bool| {
        let arms: Vec<(&RefModel, f32)> = if guided { vec![(arm, 1.0)] } else { vec![] };
        base.decode(&greedy(base, &arms, &base.encode(prompt), TOKENS).ids)
    };

    // Every router gets every prompt, guided and not, all at once.
    let routers = [c.router_url.as_str(), second_url.as_str()];
    let jobs: Vec<(&str, &str, bool)> = routers
        .iter()
        .flat_map(|&r| prompts.iter().flat_map(move |&p| [(r, p, false), (r, p, true)]))
        .collect();
    let start = Barrier::new(jobs.len());
    let results: Vec<(String, String, bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(router, prompt, guided)| {
                let start = &start;
                s.spawn(move || {
                    let mut body = completion(prompt, TOKENS);
                    if guided {
                        body = with_guidance(body, &[(ARM_NAME, 1.0)], 1.0);
                    }
                    start.wait();
                    let r = http::post_json(&format!("{router}/v1/completions"), &body).unwrap();
                    assert_eq!(r.status, 200, "{router}: {}", r.text());
                    (router.to_string(), prompt.to_string(), guided, choice_text(&r.json().unwrap()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (router, prompt, guided, text) in &results {
        assert_eq!(
            text,
            &reference(prompt, *guided),
            "router {router}, prompt {prompt:?}, guided {guided}: another request's KV leaked in\n{}",
            c.logs()
        );
    }
    c.assert_no_kv(std::time::Duration::from_secs(10));
}
