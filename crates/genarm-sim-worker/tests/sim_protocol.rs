//! The simulation worker over real sockets: it speaks the worker protocol (Info, health, Step,
//! Release, Stats, the protocol's sequence errors), waits its simulated forward time, is
//! deterministic for a seed, and a real router serves guided requests over it.

use std::time::{Duration, Instant};

use genarm_fusion::{unpack, WireDtype};
use genarm_proto::v1::seq_result::Outcome;
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{
    FetchRowsRequest, InfoRequest, LogitsWire, ReleaseRequest, Role, SeqErrorCode, SeqStep, StatsRequest,
    StepRequest, TokenIds, WORKER_SERVICE_NAME,
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
async fn the_sparse_wire_sends_certificates_of_the_full_rows_and_fetch_rows_serves_them() {
    let (_w, url) = sim("sim arm", &["--forward-ms", "0", "--role", "reward", "--reward-name", "helpful"]);
    let mut c = client(&url).await;
    let info = c.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.logits_wires, [LogitsWire::Full as i32, LogitsWire::Sparse as i32]);
    // A twin (same seed) gives the same rows for the same tokens: its sparse step is checked
    // against the first worker's full step of the same sequences.
    let (_twin, twin_url) =
        sim("sim arm twin", &["--forward-ms", "0", "--role", "reward", "--reward-name", "helpful"]);
    let mut twin = client(&twin_url).await;
    let seqs = || (1..=3).map(|id| (id, 0, vec![4, 5])).collect::<Vec<_>>();
    let full = c.step(step("helpful", seqs())).await.unwrap().into_inner();
    let mut sparse_req = step("helpful", seqs());
    sparse_req.logits_wire = LogitsWire::Sparse as i32;
    sparse_req.candidates = 16;
    let sparse = twin.step(sparse_req).await.unwrap().into_inner();
    for (f, s) in full.results.iter().zip(&sparse.results) {
        let row = logits(&f.outcome);
        let Some(Outcome::Sparse(cert)) = &s.outcome else {
            panic!("expected a certificate: {:?}", s.outcome)
        };
        assert_eq!(cert.ids.len(), 16);
        let mut order: Vec<u32> = (0..V as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        assert_eq!(cert.ids, order[..16], "the candidates are the row's top 16, in rank order");
        for (&id, &x) in cert.ids.iter().zip(&cert.logits) {
            assert_eq!(x, row[id as usize]);
        }
        assert_eq!(cert.outside_max, row[order[16] as usize]);
    }
    // FetchRows serves the sparse step's full rows until the next step or the release.
    let fetch = |ids: Vec<u64>| FetchRowsRequest {
        reward_name: "helpful".into(),
        seq_ids: ids,
        logits_dtype: 0,
        logits_len: V as u32,
        ..Default::default()
    };
    let rows = twin.fetch_rows(fetch(vec![2, 1])).await.unwrap().into_inner();
    assert_eq!(logits(&rows.results[0].outcome), logits(&full.results[1].outcome));
    assert_eq!(logits(&rows.results[1].outcome), logits(&full.results[0].outcome));
    // Refined: 40 candidates of the same row, and its exact values at the ids asked for.
    let refine = FetchRowsRequest {
        logits_wire: LogitsWire::Sparse as i32,
        candidates: 40,
        extra_ids: vec![TokenIds { ids: vec![3, V as u32 - 1] }],
        ..fetch(vec![2])
    };
    let refined = twin.fetch_rows(refine).await.unwrap().into_inner();
    let row = logits(&full.results[1].outcome);
    let Some(Outcome::Sparse(cert)) = &refined.results[0].outcome else {
        panic!("expected a refined certificate: {:?}", refined.results[0].outcome)
    };
    assert_eq!(cert.ids.len(), 40);
    for (&id, &x) in cert.ids.iter().zip(&cert.logits).chain(cert.extra_ids.iter().zip(&cert.extra_logits)) {
        assert_eq!(x, row[id as usize], "id {id}");
    }
    assert!(cert.extra_ids.iter().all(|id| [3, V as u32 - 1].contains(id) && !cert.ids.contains(id)));
    assert!(cert.extra_logits.iter().all(|&x| x <= cert.outside_max), "extras are bounded by outside_max");
    twin.release(ReleaseRequest { seq_ids: vec![1] }).await.unwrap();
    let rows = twin.fetch_rows(fetch(vec![1, 3])).await.unwrap().into_inner();
    assert_eq!(error_code(&rows.results[0].outcome), SeqErrorCode::UnknownSequence);
    logits(&rows.results[1].outcome);
    // A full step leaves nothing to fetch.
    twin.step(step("helpful", vec![(3, 2, vec![6])])).await.unwrap();
    let rows = twin.fetch_rows(fetch(vec![3])).await.unwrap().into_inner();
    assert_eq!(error_code(&rows.results[0].outcome), SeqErrorCode::UnknownSequence);
    let e = twin
        .fetch_rows(FetchRowsRequest { reward_name: "other".into(), ..fetch(vec![3]) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

/// A router over `base_url` and the `helpful` ARM at `arm_url` on `wire`, ready.
async fn router(base_url: &str, arm_url: &str, wire: &str) -> (ChildProcess, String) {
    let mut cmd = genarm_command("genarm-router").unwrap();
    cmd.args(["--listen", "127.0.0.1:0", "--served-model-name", "sim", "--base", base_url]).args([
        "--rm",
        &format!("helpful={arm_url}"),
        "--logits-wire",
        wire,
    ]);
    let mut router = ChildProcess::spawn(&format!("router ({wire} wire)"), cmd).unwrap();
    let addr = router.wait_listening(Instant::now() + Duration::from_secs(60)).unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("http://{addr}/ready")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the router never became ready\n{}", router.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (router, format!("http://{addr}"))
}

async fn post(url: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let r = reqwest::Client::new().post(format!("{url}{path}")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn a_real_router_serves_guided_requests_over_simulated_workers() {
    let (_base, base_url) = sim("sim base", &["--forward-ms", "2"]);
    let (_arm, arm_url) =
        sim("sim arm", &["--forward-ms", "2", "--role", "reward", "--reward-name", "helpful"]);
    let (_full, full) = router(&base_url, &arm_url, "full").await;
    let (_sparse, sparse) = router(&base_url, &arm_url, "sparse").await;
    let mut texts = Vec::new();
    for guidance in [serde_json::json!({}), serde_json::json!({"rewards": {"helpful": 2.0}})] {
        let body = serde_json::json!({
            "model": "sim", "prompt": "t5 t6 t7", "max_tokens": 8, "temperature": 0, "guidance": guidance
        });
        let v = post(&full, "/v1/completions", body).await;
        assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
        texts.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    assert_ne!(texts[0], texts[1], "guidance by the simulated ARM must change the greedy output");
    // Chat completions too: the simulated models report a chat template.
    let body = serde_json::json!({
        "model": "sim", "messages": [{"role": "user", "content": "t5 t6 t7"}], "max_tokens": 4,
        "temperature": 0.7, "top_p": 0.9, "seed": 1, "guidance": {"rewards": {"helpful": 1.0}}
    });
    let v = post(&full, "/v1/chat/completions", body).await;
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
    // 3 words of the message, `user` and `assistant` (both outside the vocabulary: t0).
    assert_eq!(v["usage"]["prompt_tokens"], 5, "{v}");

    // The sparse wire over the simulators answers exactly as the full wire: rows follow from the
    // tokens, so both routers see the same rows. Greedy, top-p, pure temperature, a negative
    // weight, and logprobs (which need the full rows).
    let mut cases = Vec::new();
    for (i, (temperature, top_p, weight)) in
        [(0.0, 1.0, 2.0), (0.7, 0.9, 1.0), (1.0, 1.0, 1.0), (0.7, 0.9, -1.0), (0.0, 1.0, 0.0)]
            .into_iter()
            .enumerate()
    {
        cases.push(serde_json::json!({
            "model": "sim", "prompt": format!("t{} t6 t7", 5 + i), "max_tokens": 12, "seed": 7 + i,
            "temperature": temperature, "top_p": top_p, "guidance": {"rewards": {"helpful": weight}}
        }));
    }
    cases.push(serde_json::json!({
        "model": "sim", "prompt": "t9 t9", "max_tokens": 6, "temperature": 0.7, "seed": 3,
        "logprobs": 3, "guidance": {"rewards": {"helpful": 1.0}}
    }));
    for body in cases {
        let a = post(&full, "/v1/completions", body.clone()).await;
        let b = post(&sparse, "/v1/completions", body.clone()).await;
        assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"], "{body}");
        assert_eq!(a["choices"][0]["logprobs"], b["choices"][0]["logprobs"], "{body}");
    }
    let metrics = |url: String| async move {
        reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap()
    };
    let (m_full, m_sparse) = (metrics(full).await, metrics(sparse).await);
    use genarm_testkit::metrics::total;
    assert!(
        total(&m_sparse, "genarm_sparse_certified_total") > 0.0,
        "the sparse router certified nothing:\n{m_sparse}"
    );
    // The full router also served the first requests; still, the sparse one, with its fetches
    // for logprobs, negative weights and uncertified draws, carries under half its bytes.
    let (sparse_bytes, full_bytes) =
        (total(&m_sparse, "genarm_model_wire_bytes_total"), total(&m_full, "genarm_model_wire_bytes_total"));
    assert!(sparse_bytes * 2.0 < full_bytes, "wire bytes: sparse {sparse_bytes}, full {full_bytes}");
}
