//! The worker binaries as real processes over real sockets: health, `Info`, `Step` logits
//! against the engine run in-process, packing, per-sequence errors, KV exhaustion, `Release`,
//! tensor parallelism, refused reward names, clean shutdown. Build the binaries first:
//! `cargo build --workspace --bins`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use genarm_fusion::packed::{unpack, WireDtype};
use genarm_model::{Engine, EngineOptions, ModelAssets, StepSeq};
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{
    seq_result, InfoRequest, LogitsDtype, ReleaseRequest, Role, SeqErrorCode, SeqResult, SeqStep,
    StatsRequest, StepRequest, StepResponse, WORKER_SERVICE_NAME,
};
use genarm_testkit::cluster::{genarm_command, ChildProcess};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const FIXTURE: &str = "llama-mha";
const STARTUP: Duration = Duration::from_secs(60);

/// A worker process on 127.0.0.1:0 with a connected client.
struct Worker {
    process: ChildProcess,
    addr: SocketAddr,
    client: WorkerClient<Channel>,
    channel: Channel,
}

/// Starts `bin` (`genarm-base-worker` or `genarm-rm-worker`) on the fixture with `args`, waits
/// for its `GENARM_LISTENING` line and for health SERVING.
async fn start(bin: &str, args: &[&str]) -> Result<Worker> {
    let mut command = genarm_command(bin)?;
    command
        .env("CANDLE_NUM_THREADS", "1")
        .arg("--model")
        .arg(genarm_testkit::fixture_dir(FIXTURE))
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    let mut process = ChildProcess::spawn(bin, command)?;
    let deadline = Instant::now() + STARTUP;
    let addr = tokio::task::block_in_place(|| process.wait_listening(deadline))?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await.context("connecting")?;
    wait_serving(&channel, deadline).await.with_context(|| process.log_tail(40))?;
    let client = WorkerClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    Ok(Worker { process, addr, client, channel })
}

async fn health(channel: &Channel, service: &str) -> Result<ServingStatus> {
    let resp = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: service.into() })
        .await
        .context("health check")?;
    Ok(resp.into_inner().status())
}

async fn wait_serving(channel: &Channel, deadline: Instant) -> Result<()> {
    loop {
        let status = health(channel, "").await?;
        if status == ServingStatus::Serving {
            return Ok(());
        }
        ensure!(status == ServingStatus::NotServing, "unexpected health status {status:?}");
        ensure!(Instant::now() < deadline, "health did not turn SERVING in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assets() -> ModelAssets {
    ModelAssets::open(&genarm_testkit::fixture_dir(FIXTURE)).expect("open the fixture")
}

fn prompt_ids(assets: &ModelAssets) -> Vec<Vec<u32>> {
    genarm_testkit::PROMPTS
        .iter()
        .map(|p| assets.tokenizer.tokenizer.encode(*p, false).expect("encode").get_ids().to_vec())
        .collect()
}

fn step_req(reward_name: &str, dtype: LogitsDtype, seqs: Vec<(u64, u32, Vec<u32>)>) -> StepRequest {
    StepRequest {
        reward_name: reward_name.into(),
        seqs: seqs
            .into_iter()
            .map(|(seq_id, start_pos, tokens)| SeqStep { seq_id, start_pos, tokens })
            .collect(),
        logits_dtype: dtype as i32,
        logits_len: 0,
        ..Default::default()
    }
}

fn logits_bytes(r: &SeqResult) -> &[u8] {
    match r.outcome.as_ref() {
        Some(seq_result::Outcome::Logits(b)) => b,
        other => panic!("sequence {} failed: {other:?}", r.seq_id),
    }
}

fn error_code(r: &SeqResult) -> (SeqErrorCode, String) {
    match r.outcome.as_ref() {
        Some(seq_result::Outcome::Error(e)) => (e.code(), e.message.clone()),
        other => panic!("sequence {} should have failed: {other:?}", r.seq_id),
    }
}

fn unpack_all(bytes: &[u8], dtype: WireDtype) -> Vec<f32> {
    let n = bytes.len() / dtype.size_bytes();
    let mut out = vec![0.0; n];
    unpack(bytes, dtype, n, &mut out).expect("unpack");
    out
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

async fn step(w: &mut Worker, req: StepRequest) -> StepResponse {
    w.client.step(req).await.expect("step").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_worker_serves_info_and_exact_logits() -> Result<()> {
    let mut w = start("genarm-rm-worker", &["--name", "helpful"]).await?;
    let assets = assets();
    assert_eq!(health(&w.channel, WORKER_SERVICE_NAME).await?, ServingStatus::Serving);

    // Info.
    let info = w.client.info(InfoRequest {}).await?.into_inner();
    assert_eq!(info.protocol_version, 1);
    assert_eq!(info.model_id, FIXTURE);
    assert_eq!(info.role(), Role::Reward);
    assert_eq!(info.reward_name, "helpful");
    assert_eq!(info.vocab_size as usize, assets.config.vocab_size);
    let size = assets.tokenizer.tokenizer.get_vocab_size(true);
    assert_eq!(
        info.vocab_fingerprint,
        genarm_text::vocab_fingerprint(&assets.tokenizer.tokenizer, size).to_vec()
    );
    assert_eq!(info.max_positions as usize, assets.config.max_position_embeddings);
    assert_eq!((info.dtype.as_str(), info.tp_size), ("f32", 1));
    assert_eq!((info.kv_capacity_tokens, info.kv_block_size), (4096, 16));
    let parsed: serde_json::Value = serde_json::from_str(&info.tokenizer_json)?;
    assert!(parsed.get("model").is_some(), "tokenizer_json is a tokenizer.json");
    let from_json =
        tokenizers::Tokenizer::from_bytes(info.tokenizer_json.as_bytes()).map_err(anyhow::Error::msg)?;
    assert_eq!(from_json.get_vocab_size(true), size);
    assert_eq!(info.chat_template, assets.tokenizer.chat_template);
    assert_eq!(info.bos_token_id, assets.tokenizer.bos_token_id);
    assert_eq!(info.eos_token_ids, assets.tokenizer.eos_token_ids);
    assert_eq!(info.add_bos_token, assets.tokenizer.add_bos_token);
    assert!(!info.instance_id.is_empty());

    // Prefill of every prompt in one step, then greedy decode, against the engine in-process.
    let engine = Engine::load(&assets, EngineOptions::default())?;
    let prompts = prompt_ids(&assets);
    let mut lens: Vec<usize> = vec![0; prompts.len()];
    let mut pending = prompts.clone();
    for round in 0..4 {
        let seqs: Vec<(u64, u32, Vec<u32>)> =
            pending.iter().enumerate().map(|(i, t)| (i as u64 + 10, lens[i] as u32, t.clone())).collect();
        let resp = step(&mut w, step_req("helpful", LogitsDtype::F32, seqs.clone())).await;
        let local = engine.step(
            seqs.iter()
                .map(|(id, pos, t)| StepSeq { seq_id: *id, start_pos: *pos as usize, tokens: t.clone() })
                .collect(),
        )?;
        assert_eq!(resp.results.len(), prompts.len());
        for (i, (r, l)) in resp.results.iter().zip(local.results).enumerate() {
            assert_eq!(r.seq_id, i as u64 + 10);
            let l = l?;
            let bytes = logits_bytes(r);
            assert_eq!(bytes.len(), 4 * assets.config.vocab_size);
            let got = unpack_all(bytes, WireDtype::F32);
            let same = got.iter().zip(&l).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "round {round} seq {i}: worker logits differ from the engine's");
            lens[i] += pending[i].len();
            pending[i] = vec![argmax(&l)];
        }
        assert!(resp.forward_micros > 0);
    }

    // bf16 / f16 halve the bytes and stay close to f32; logits_len cuts. A fresh sequence's
    // prefill is deterministic, so each dtype re-runs it after a release.
    let fresh = vec![(200, 0, prompts[2].clone())];
    let r = step(&mut w, step_req("helpful", LogitsDtype::F32, fresh.clone())).await;
    let reference = unpack_all(logits_bytes(&r.results[0]), WireDtype::F32);
    for (dtype, wire, tol) in
        [(LogitsDtype::Bf16, WireDtype::Bf16, 1.0 / 256.0), (LogitsDtype::F16, WireDtype::F16, 1.0 / 2048.0)]
    {
        assert_eq!(w.client.release(ReleaseRequest { seq_ids: vec![200] }).await?.into_inner().released, 1);
        let r = step(&mut w, step_req("helpful", dtype, fresh.clone())).await;
        assert_eq!(logits_bytes(&r.results[0]).len(), 2 * assets.config.vocab_size, "{wire}: half the bytes");
        assert_eq!(w.client.release(ReleaseRequest { seq_ids: vec![200] }).await?.into_inner().released, 1);
        let mut req = step_req("helpful", dtype, fresh.clone());
        req.logits_len = 100;
        let r = step(&mut w, req).await;
        let bytes = logits_bytes(&r.results[0]);
        assert_eq!(bytes.len(), 2 * 100, "{wire}: cut to logits_len");
        for (a, b) in unpack_all(bytes, wire).iter().zip(&reference[..100]) {
            assert!((a - b).abs() <= tol * b.abs().max(1e-3), "{wire}: {a} vs {b}");
        }
    }
    assert_eq!(w.client.release(ReleaseRequest { seq_ids: vec![200] }).await?.into_inner().released, 1);

    // A reward name the worker does not serve.
    let err =
        w.client.step(step_req("harmless", LogitsDtype::F32, vec![(99, 0, vec![1])])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("\"helpful\"") && err.message().contains("\"harmless\""),
        "{}",
        err.message()
    );
    let err = w.client.step(step_req("", LogitsDtype::F32, vec![(99, 0, vec![1])])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut req = step_req("helpful", LogitsDtype::F32, vec![(99, 0, vec![1])]);
    req.logits_len = assets.config.vocab_size as u32 + 1;
    let err = w.client.step(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("logits_len"), "{}", err.message());

    // Release frees every block; Stats counts.
    let stats = w.client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.sequences as usize, prompts.len());
    assert!(stats.kv_used_blocks > 0);
    assert_eq!((stats.kv_total_blocks, stats.kv_block_size), (256, 16));
    assert!(stats.steps >= 4 && stats.sequence_steps >= 16 && stats.tokens > 0, "{stats:?}");
    let ids: Vec<u64> = (0..prompts.len() as u64).map(|i| i + 10).chain([12345]).collect();
    let released = w.client.release(ReleaseRequest { seq_ids: ids }).await?.into_inner().released;
    assert_eq!(released as usize, prompts.len());
    let stats = w.client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!((stats.kv_used_blocks, stats.sequences), (0, 0));

    // SIGTERM: health goes away and the process exits 0.
    let status = w.process.stop(Duration::from_secs(10));
    assert!(status.success(), "worker exited with {status}");
    let _ = w.addr;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sequences_fail_alone() -> Result<()> {
    let mut w = start("genarm-base-worker", &[]).await?;
    let assets = assets();
    let prompts = prompt_ids(&assets);
    let vocab = assets.config.vocab_size as u32;
    let r = step(&mut w, step_req("", LogitsDtype::F32, vec![(1, 0, prompts[0].clone())])).await;
    logits_bytes(&r.results[0]);
    let held = prompts[0].len() as u32;
    let resp = step(
        &mut w,
        step_req(
            "",
            LogitsDtype::F32,
            vec![
                (2, 0, prompts[1].clone()), // fine: new sequence
                (3, 5, vec![1]),            // unknown sequence past 0
                (1, held + 1, vec![1]),     // position mismatch
                (4, 0, vec![vocab]),        // token out of range
                (5, 0, vec![]),             // empty
                (6, 0, vec![1; 600]),       // past the context (512)
                (7, 0, vec![3, 4]),         // fine: new sequence
            ],
        ),
    )
    .await;
    let ids: Vec<u64> = resp.results.iter().map(|r| r.seq_id).collect();
    assert_eq!(ids, [2, 3, 1, 4, 5, 6, 7]);
    logits_bytes(&resp.results[0]);
    logits_bytes(&resp.results[6]);
    let expect = [
        (1, SeqErrorCode::UnknownSequence, "replay"),
        (2, SeqErrorCode::PositionMismatch, "sequence 1"),
        (3, SeqErrorCode::Invalid, "outside the vocabulary"),
        (4, SeqErrorCode::Invalid, "at least one token"),
        (5, SeqErrorCode::Invalid, "context"),
    ];
    for (i, code, text) in expect {
        let (got, message) = error_code(&resp.results[i]);
        assert_eq!(got, code, "result {i}: {message}");
        assert!(message.contains(text), "result {i}: {message:?} should mention {text:?}");
    }
    // The failed sequences hold nothing; the good ones advanced.
    let stats = w.client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.sequences, 3);
    let r = step(&mut w, step_req("", LogitsDtype::F32, vec![(1, held, vec![3])])).await;
    logits_bytes(&r.results[0]);
    // The base worker refuses a reward name.
    let err = w.client.step(step_req("helpful", LogitsDtype::F32, vec![(9, 0, vec![1])])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("base"), "{}", err.message());
    // A step with an unknown logits dtype.
    let mut req = step_req("", LogitsDtype::F32, vec![(9, 0, vec![1])]);
    req.logits_dtype = 7;
    let err = w.client.step(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Concurrent steps from 8 clients on one connection: all served (the engine serialises them).
    let before = w.client.stats(StatsRequest {}).await?.into_inner();
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let mut client = w.client.clone();
            let tokens = prompts[i as usize % prompts.len()].clone();
            tokio::spawn(async move {
                client.step(step_req("", LogitsDtype::Bf16, vec![(100 + i, 0, tokens)])).await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await?.map_err(|e| anyhow::anyhow!("{e}"))?.into_inner();
        assert_eq!(logits_bytes(&r.results[0]).len(), 2 * vocab as usize);
    }
    let after = w.client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!((after.steps - before.steps, after.sequence_steps - before.sequence_steps), (8, 8));
    assert_eq!(after.sequences, before.sequences + 8);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_kv_pool_exhausts_and_release_frees_it() -> Result<()> {
    let mut w = start("genarm-base-worker", &["--kv-capacity-tokens", "32", "--kv-block-size", "16"]).await?;
    let info = w.client.info(InfoRequest {}).await?.into_inner();
    assert_eq!((info.kv_capacity_tokens, info.kv_block_size), (32, 16));
    // 20 tokens take both blocks.
    let r = step(&mut w, step_req("", LogitsDtype::F32, vec![(1, 0, vec![5; 20])])).await;
    logits_bytes(&r.results[0]);
    let r = step(&mut w, step_req("", LogitsDtype::F32, vec![(2, 0, vec![5]), (1, 20, vec![6])])).await;
    let (code, message) = error_code(&r.results[0]);
    assert_eq!(code, SeqErrorCode::KvExhausted, "{message}");
    assert!(message.contains("sequence 2"), "{message}");
    logits_bytes(&r.results[1]);
    let stats = w.client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!((stats.kv_used_blocks, stats.kv_total_blocks, stats.sequences), (2, 2, 1));
    assert_eq!(w.client.release(ReleaseRequest { seq_ids: vec![1] }).await?.into_inner().released, 1);
    let stats = w.client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!((stats.kv_used_blocks, stats.sequences), (0, 0));
    let r = step(&mut w, step_req("", LogitsDtype::F32, vec![(2, 0, vec![5])])).await;
    logits_bytes(&r.results[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_parallel_worker_matches_tp1() -> Result<()> {
    let mut w = start("genarm-base-worker", &["--tp", "2"]).await?;
    let info = w.client.info(InfoRequest {}).await?.into_inner();
    assert_eq!(info.tp_size, 2);
    assert_eq!(info.role(), Role::Base);
    let assets = assets();
    let engine = Engine::load(&assets, EngineOptions::default())?;
    let prompts = prompt_ids(&assets);
    let seqs: Vec<(u64, u32, Vec<u32>)> =
        prompts.iter().enumerate().map(|(i, p)| (i as u64, 0, p.clone())).collect();
    let resp = step(&mut w, step_req("", LogitsDtype::F32, seqs.clone())).await;
    let local = engine.step(
        seqs.iter().map(|(id, _, t)| StepSeq { seq_id: *id, start_pos: 0, tokens: t.clone() }).collect(),
    )?;
    let mut worst = 0.0f32;
    for (r, l) in resp.results.iter().zip(local.results) {
        let got = unpack_all(logits_bytes(r), WireDtype::F32);
        for (a, b) in got.iter().zip(&l?) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("tp=2 worker vs tp=1 engine: max |Δ logit| = {worst:.2e}");
    assert!(worst <= 1e-4, "tp=2 differs from tp=1 by {worst}");
    Ok(())
}

#[test]
fn bad_flags_and_models_exit_with_a_clear_error() -> Result<()> {
    let deadline = || Instant::now() + Duration::from_secs(30);
    let fixture = genarm_testkit::fixture_dir(FIXTURE);
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "genarm-base-worker",
            vec!["--model", "/nonexistent/model", "--listen", "127.0.0.1:0"],
            "/nonexistent/model",
        ),
        ("genarm-rm-worker", vec!["--model", "/x", "--listen", "127.0.0.1:0"], "--name"),
        (
            "genarm-base-worker",
            vec!["--model", fixture.to_str().unwrap(), "--listen", "not-an-address"],
            "not-an-address",
        ),
        (
            "genarm-base-worker",
            vec!["--model", fixture.to_str().unwrap(), "--listen", "127.0.0.1:0", "--tp", "3"],
            "choose --tp among the divisors of 8",
        ),
    ];
    for (bin, args, expect) in cases {
        let mut command = genarm_command(bin)?;
        command.args(&args);
        let mut p = ChildProcess::spawn(bin, command)?;
        let status = p.wait_exit(deadline())?;
        assert!(!status.success(), "{bin} {args:?} should fail");
        // The readers drain the pipes after the exit: wait for the line.
        let drained = Instant::now() + Duration::from_secs(10);
        while !p.log_tail(20).contains(expect) && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = p.log_tail(20);
        assert!(log.contains(expect), "{bin} {args:?}: output should mention {expect:?}:\n{log}");
        assert!(!p.stdout_lines().iter().any(|l| l.starts_with("GENARM_LISTENING")), "{log}");
    }
    Ok(())
}

/// On the real SmolLM2-135M GGUF (fetched by `scripts/fetch-smollm2.sh`; loading takes seconds):
/// health is NOT_SERVING and steps UNAVAILABLE while it loads, `Info` answers at once; then it
/// serves batched steps; and SIGTERM during loading exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_not_serving_while_loading_then_serving_steps() -> Result<()> {
    let path = genarm_testkit::smollm2::gguf_path()?;
    let spawn = || -> Result<ChildProcess> {
        let mut command = genarm_command("genarm-base-worker")?;
        command.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(&path).args(["--listen", "127.0.0.1:0"]);
        ChildProcess::spawn("genarm-base-worker smollm2", command)
    };

    // SIGTERM while loading.
    let mut p = spawn()?;
    tokio::task::block_in_place(|| p.wait_listening(Instant::now() + STARTUP))?;
    let started = Instant::now();
    let status = p.stop(Duration::from_secs(10));
    assert!(status.success(), "stopping during loading: {status}\n{}", p.log_tail(20));
    eprintln!("SIGTERM during loading: exited in {:?}", started.elapsed());

    let mut p = spawn()?;
    let addr = tokio::task::block_in_place(|| p.wait_listening(Instant::now() + STARTUP))?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = WorkerClient::new(channel.clone()).max_decoding_message_size(256 << 20);
    assert_eq!(health(&channel, "").await?, ServingStatus::NotServing, "{}", p.log_tail(20));
    assert_eq!(health(&channel, WORKER_SERVICE_NAME).await?, ServingStatus::NotServing);
    let err = client.step(step_req("", LogitsDtype::F32, vec![(1, 0, vec![1])])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("loading"), "{}", err.message());
    let info = client.info(InfoRequest {}).await?.into_inner();
    assert_eq!(info.vocab_size, 49152);
    assert!(info.chat_template.is_some());
    wait_serving(&channel, Instant::now() + STARTUP).await.with_context(|| p.log_tail(40))?;

    let assets = ModelAssets::open(&path)?;
    let prompt = assets
        .tokenizer
        .tokenizer
        .encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    // Served: a batched prefill and a decode step over gRPC. (Their speed is a benchmark's
    // business: `cargo bench -p genarm-model --bench step_throughput` and `genarm bench`.)
    let batch = 4u64;
    let seqs: Vec<(u64, u32, Vec<u32>)> = (0..batch).map(|i| (i, 0, prompt.clone())).collect();
    let r = client.step(step_req("", LogitsDtype::F32, seqs)).await?.into_inner();
    assert_eq!(r.results.len(), batch as usize);
    assert_eq!(logits_bytes(&r.results[0]).len(), 4 * 49152);
    let toks: Vec<u32> =
        r.results.iter().map(|r| argmax(&unpack_all(logits_bytes(r), WireDtype::F32))).collect();
    assert!(toks.windows(2).all(|w| w[0] == w[1]), "one prompt, one greedy token: {toks:?}");
    let pos = prompt.len() as u32;
    let seqs = toks.iter().enumerate().map(|(k, &tok)| (k as u64, pos, vec![tok])).collect();
    let r = client.step(step_req("", LogitsDtype::F32, seqs)).await?.into_inner();
    assert!(r.results.iter().all(|r| logits_bytes(r).len() == 4 * 49152));
    assert!(r.forward_micros > 0);
    client.release(ReleaseRequest { seq_ids: (0..batch).collect() }).await?;
    let status = p.stop(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    Ok(())
}
