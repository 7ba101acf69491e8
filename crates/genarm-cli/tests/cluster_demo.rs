//! `genarm demo` as a newcomer runs it: the real SmolLM2 base with the two committed demo ARMs,
//! the side-by-side examples it prints once ready, and guidance that visibly changes the text.

mod common;

use std::time::{Duration, Instant};

use common::*;
use genarm_demo::scorers;
use genarm_testkit::cluster::genarm_command;

/// The score printed in the example header `[label]  (upbeat +N, concise -M)`.
fn printed_score(header: &str, objective: &str) -> f64 {
    let scores = &header[header.find('(').unwrap_or_else(|| panic!("no scores in {header}"))..];
    let at = scores.find(objective).unwrap_or_else(|| panic!("no {objective} score in {header}"));
    let rest = &scores[at + objective.len()..];
    let value: String = rest.trim_start().chars().take_while(|c| "+-.0123456789".contains(*c)).collect();
    value.parse().unwrap_or_else(|_| panic!("bad score in {header}"))
}

#[test]
fn demo_serves_the_base_with_both_arms_and_shows_guided_answers_side_by_side() {
    let _serial = serial();
    let mut command = genarm_command("genarm").unwrap();
    command.env("CANDLE_NUM_THREADS", "1").args(["demo", "--port", "0", "--quiet"]);
    let mut demo = ChildProcess::spawn("genarm demo", command).unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let addr = demo.wait_listening(deadline).unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("http://{addr}");
    demo.wait_stdout_line(deadline, |l| l.starts_with("Try them yourself"))
        .unwrap_or_else(|e| panic!("the demo printed no examples: {e:#}"));
    // The lines after it arrive one by one: poll until the three curl lines are in.
    let curl = format!("curl -s {url}/v1/chat/completions");
    let printed = poll_until(Duration::from_secs(30), || {
        demo.stdout_lines().iter().filter(|l| l.contains(&curl)).count() >= 3
    });
    let stdout = demo.stdout_lines().to_vec();
    let text = stdout.join("\n");

    // Three examples, each a header with both scores and the answer on the following lines.
    let header = |label: &str| -> String {
        stdout
            .iter()
            .find(|l| l.starts_with(&format!("[{label}]")))
            .unwrap_or_else(|| panic!("no [{label}] example in:\n{text}"))
            .clone()
    };
    let unguided = header("unguided");
    let upbeat = header("upbeat = 2");
    let concise = header("concise = 2");
    assert!(
        printed_score(&upbeat, "upbeat") > printed_score(&unguided, "upbeat"),
        "upbeat guidance should raise the upbeat score:\n{text}"
    );
    assert!(
        printed_score(&concise, "concise") > printed_score(&unguided, "concise"),
        "concise guidance should raise the concise score:\n{text}"
    );
    assert!(printed, "the demo printed fewer than three curl lines:\n{text}");
    assert_eq!(text.matches(&curl).count(), 3, "{text}");

    // The same through the API, greedy: guided text differs from unguided and scores higher.
    let models = http::get(&format!("{url}/v1/models")).unwrap();
    let model = models.json().unwrap()["data"][0]["id"].as_str().unwrap().to_string();
    let ask = |rewards: &[(&str, f64)]| -> String {
        let mut body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "Tell me about kites."}],
            "max_tokens": 48, "temperature": 0,
        });
        if !rewards.is_empty() {
            body = with_guidance(body, rewards, 1.0);
        }
        let r = http::post_json(&format!("{url}/v1/chat/completions"), &body).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    let plain = ask(&[]);
    let guided = ask(&[("upbeat", 2.0)]);
    assert_ne!(plain, guided, "guidance changed nothing");
    let up = scorers::by_name("upbeat").unwrap();
    assert!(up.score(&guided) > up.score(&plain), "unguided: {plain:?}\nupbeat=2: {guided:?}");
    demo.stop(Duration::from_secs(20));
}
