//! The simulation worker over real sockets: it speaks the worker protocol (Info, health, Step,
//! Release, Stats, the protocol's sequence errors), waits its simulated forward time, is
//! deterministic for a seed, and a real router serves guided requests over it.

use std::time::{Duration, Instant};

use genarm_fusion::{unpack, WireDtype};
use genarm_proto::v1::seq_result::Outcome;
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{
    InfoRequest, ReleaseRequest, Role, SeqErrorCode, SeqStep, StatsRequest, StepRequest, WORKER_SERVICE_NAME,
};
use genarm_testkit::cluster::{genarm_command, ChildProcess};
use tonic::transport::Channel;

const V: usize = 5000;

fn sim(name: &str, args: &[&str]) -> (ChildProcess, String) {
    let mut cmd = genarm_command("genarm-sim-worker").unwrap();
    cmd.args(["--vocab-size", &V.to_string(), "--synthetic-rows", "64", "--seed", "11"]).args(args);
    let mut child = ChildProcess::spawn(name, cmd).unwrap();
    let addr = child.wait_listening(Instant::now() + Duration::from_secs(60)).unwrap();
    (child, format!("http://{addr}"))
}

async fn client(url: &str) -> WorkerClient<Channel> {
    WorkerClient::connect(url.to_string()).await.unwrap().max_decoding_message_size(64 << 20)
}

fn step(reward_name: &str, seqs: Vec<(u64, u32, Vec<u32>)>) -> StepRequest {
    StepRequest {
        reward_name: reward_name.into(),
        seqs: seqs
            .into_iter()
            .map(|(seq_id, start_pos, tokens)| SeqStep { seq_id, start_pos, tokens })
            .collect(),
        logits_dtype: 0,
        logits_len: V as u32,
        ..Default::default()
    }
}

fn logits(outcome: &Option<Outcome>) -> Vec<f32> {
    match outcome {
        Some(Outcome::Logits(b)) => {
            let mut out = vec![0.0; V];
            unpack(b, WireDtype::F32, V, &mut out).unwrap();
            out
        }
        other => panic!("expected logits, got {other:?}"),
    }
}

fn error_code(outcome: &Option<Outcome>) -> SeqErrorCode {
    match outcome {
        Some(Outcome::Error(e)) => SeqErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn it_speaks_the_worker_protocol_with_the_simulated_forward_time() {
    let (_base, url) = sim("sim base", &["--forward-ms", "30", "--forward-ms-per-seq", "1"]);
    let mut c = client(&url).await;
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: WORKER_SERVICE_NAME.into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let info = c.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.role, info.vocab_size as usize, info.model_id.as_str()),
        (Role::Base as i32, V, "sim-base")
    );
    let text = genarm_text::ModelText::new("sim", &info.tokenizer_json, None, None, vec![], false).unwrap();
    assert_eq!(text.vocab_size(), V);

    // Four new sequences: forward 30 + 4 · 1 ms, reported and waited.
    let started = Instant::now();
    let r = c.step(step("", (1..=4).map(|id| (id, 0, vec![1, 2, 3])).collect())).await.unwrap().into_inner();
    assert!(started.elapsed() >= Duration::from_millis(34), "{:?}", started.elapsed());
    assert_eq!(r.forward_micros, 34_000);
    let first: Vec<Vec<f32>> = r.results.iter().map(|s| logits(&s.outcome)).collect();
    assert!(first.iter().all(|l| l.iter().all(|x| x.is_finite())));

    // The protocol's errors: unknown sequence, position mismatch, and an empty step.
    let r =
        c.step(step("", vec![(99, 5, vec![1]), (1, 7, vec![1]), (2, 3, vec![])])).await.unwrap().into_inner();
    let codes: Vec<SeqErrorCode> = r.results.iter().map(|s| error_code(&s.outcome)).collect();
    assert_eq!(codes, [SeqErrorCode::UnknownSequence, SeqErrorCode::PositionMismatch, SeqErrorCode::Invalid]);
    let e = c.step(step("helpful", vec![(1, 3, vec![4])])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Release frees, Stats counts.
    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((stats.sequences, stats.steps, stats.tokens), (4, 2, 12));
    assert_eq!(c.release(ReleaseRequest { seq_ids: vec![1, 2, 77] }).await.unwrap().into_inner().released, 2);
    assert_eq!(c.stats(StatsRequest {}).await.unwrap().into_inner().sequences, 2);
}

#[tokio::test]
async fn rows_are_deterministic_per_seed_and_an_arm_disagrees_with_the_base() {
    let (_a, url_a) = sim("sim base a", &["--forward-ms", "0"]);
    let (_b, url_b) = sim("sim base b", &["--forward-ms", "0"]);
    let (_arm, url_arm) =
        sim("sim arm", &["--forward-ms", "0", "--role", "reward", "--reward-name", "helpful"]);
    let seqs = || (10..20).map(|id| (id, 0, vec![5, 6])).collect::<Vec<_>>();
    let a = client(&url_a).await.step(step("", seqs())).await.unwrap().into_inner();
    let b = client(&url_b).await.step(step("", seqs())).await.unwrap().into_inner();
    let arm = client(&url_arm).await.step(step("helpful", seqs())).await.unwrap().into_inner();
    let (mut differ, mut argmax_differ) = (0, 0);
    for ((x, y), z) in a.results.iter().zip(&b.results).zip(&arm.results) {
        let (x, y, z) = (logits(&x.outcome), logits(&y.outcome), logits(&z.outcome));
        assert_eq!(x, y, "the same seed gives the same rows on two workers");
        differ += usize::from(x != z);
        let argmax = |l: &[f32]| l.iter().enumerate().max_by(|p, q| p.1.total_cmp(q.1)).map(|p| p.0);
        argmax_differ += usize::from(argmax(&x) != argmax(&z));
    }
    assert_eq!(differ, 10, "every ARM row differs from the base row");
    assert!(argmax_differ > 0, "the ARM must disagree with the base on some top token");
}

#[tokio::test]
async fn a_real_router_serves_guided_requests_over_simulated_workers() {
    let (_base, base_url) = sim("sim base", &["--forward-ms", "2"]);
    let (_arm, arm_url) =
        sim("sim arm", &["--forward-ms", "2", "--role", "reward", "--reward-name", "helpful"]);
    let mut cmd = genarm_command("genarm-router").unwrap();
    cmd.args(["--listen", "127.0.0.1:0", "--served-model-name", "sim", "--base", &base_url])
        .args(["--rm", &format!("helpful={arm_url}")]);
    let mut router = ChildProcess::spawn("router", cmd).unwrap();
    let addr = router.wait_listening(Instant::now() + Duration::from_secs(60)).unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("http://{addr}/ready")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the router never became ready\n{}", router.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut texts = Vec::new();
    for guidance in [serde_json::json!({}), serde_json::json!({"rewards": {"helpful": 2.0}})] {
        let body = serde_json::json!({
            "model": "sim", "prompt": "t5 t6 t7", "max_tokens": 8, "temperature": 0, "guidance": guidance
        });
        let r = http.post(format!("http://{addr}/v1/completions")).json(&body).send().await.unwrap();
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
        texts.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    assert_ne!(texts[0], texts[1], "guidance by the simulated ARM must change the greedy output");
    // Chat completions too: the simulated models report a chat template.
    let body = serde_json::json!({
        "model": "sim", "messages": [{"role": "user", "content": "t5 t6 t7"}], "max_tokens": 4,
        "temperature": 0.7, "top_p": 0.9, "seed": 1, "guidance": {"rewards": {"helpful": 1.0}}
    });
    let r = http.post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
    // 3 words of the message, `user` and `assistant` (both outside the vocabulary: t0).
    assert_eq!(v["usage"]["prompt_tokens"], 5, "{v}");
}
