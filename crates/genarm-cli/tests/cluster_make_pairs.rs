//! `genarm make-pairs` as the demo recipe runs it, against a real cluster: samples every prompt
//! several times with consecutive seeds (each equal to a direct request with that seed), then
//! pairs per objective from the samples — and re-labels the same samples offline with
//! `--from-samples` and `--require-finished`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use genarm_demo::pairs::{pairs_with, Pair, Sample};
use genarm_demo::scorers;
use genarm_testkit::cluster::genarm_command;
use serde_json::json;

fn make_pairs(args: &[&str]) -> (bool, String) {
    let mut command = genarm_command("genarm").unwrap();
    command.arg("make-pairs").args(args);
    let mut child = ChildProcess::spawn("genarm make-pairs", command).unwrap();
    let status = child
        .wait_exit(Instant::now() + Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", child.log_tail(40)));
    (status.success(), child.log_tail(40))
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn samples_match_direct_requests_and_pairs_follow_the_scorers() {
    let _serial = serial();
    let cluster = Cluster::start(ClusterSpec { base: fixture(BASE), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"Tell me about the sea.\"}\n{\"prompt\": \"Say something kind.\"}\n",
    )
    .unwrap();
    let out = dir.path().join("pairs");
    let url = format!("http://{}", cluster.router_addr());
    let (ok, log) = make_pairs(&[
        "--url",
        &url,
        "--prompts",
        prompts.to_str().unwrap(),
        "--samples",
        "3",
        "--max-tokens",
        "12",
        "--temperature",
        "1.0",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");

    let samples: Vec<Sample> = read_jsonl(&out.join("samples.jsonl"));
    assert_eq!(samples.len(), 6, "2 prompts x 3 samples");
    let mut seeds: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for s in &samples {
        seeds.entry(s.prompt_index).or_default().push(s.seed);
    }
    assert_eq!(seeds.values().cloned().collect::<Vec<_>>(), vec![vec![5, 6, 7], vec![5, 6, 7]]);
    // Every sample is what the router answers to that prompt and seed.
    let model = http::get(&cluster.url("/v1/models")).unwrap().json().unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for s in &samples {
        let body = json!({"model": model, "messages": [{"role": "user", "content": s.prompt}],
            "max_tokens": 12, "temperature": 1.0, "seed": s.seed});
        let r = http::post_json(&cluster.url("/v1/chat/completions"), &body).unwrap();
        assert_eq!(r.json().unwrap()["choices"][0]["message"]["content"].as_str().unwrap(), s.text);
    }
    for scorer in scorers::all() {
        let pairs: Vec<Pair> = read_jsonl(&out.join(format!("pairs-{}.jsonl", scorer.name())));
        let expected = pairs_with(&samples, *scorer, false);
        assert_eq!(pairs.len(), expected.len(), "{}", scorer.name());
        if scorer.name() == "concise" {
            // Random-weight text differs in length, so every prompt gives a concise pair.
            assert_eq!(pairs.len(), 2, "{pairs:?}");
        }
        for p in &pairs {
            assert!(scorer.score(&p.chosen) > scorer.score(&p.rejected), "{}: {p:?}", scorer.name());
        }
    }

    // Offline re-labelling needs no cluster; only finished responses may be chosen for concise.
    drop(cluster);
    let relabelled = dir.path().join("relabelled");
    let (ok, log) = make_pairs(&[
        "--url",
        "http://127.0.0.1:9",
        "--prompts",
        prompts.to_str().unwrap(),
        "--from-samples",
        out.join("samples.jsonl").to_str().unwrap(),
        "--require-finished",
        "concise",
        "--out",
        relabelled.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let concise: Vec<Pair> = read_jsonl(&relabelled.join("pairs-concise.jsonl"));
    let expected = pairs_with(&samples, scorers::by_name("concise").unwrap(), true);
    assert_eq!(concise.len(), expected.len());
    for p in &concise {
        let chosen = samples.iter().find(|s| s.text == p.chosen).unwrap();
        assert_eq!(chosen.finish_reason, "stop", "{p:?}");
    }
}
