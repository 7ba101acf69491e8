//! LoRA ARMs served by real `genarm-rm-worker` processes: `--model ADAPTER_DIR`, `--model
//! BACKBONE --lora ADAPTER` and the directory `genarm merge` writes give the same `Step` logits
//! for the same prompt, and differ from the plain backbone's.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fixture, serial, ChildProcess};
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{seq_result, InfoRequest, LogitsDtype, SeqStep, StepRequest};
use genarm_testkit::cluster::genarm_command;
use genarm_testkit::lora::write_random_adapter;

const BACKBONE: &str = "llama-gqa-tied";
const REWARD: &str = "arm";

/// Starts an rm-worker with `args` after `--name arm --listen 127.0.0.1:0`.
fn rm_worker(label: &str, args: &[&std::ffi::OsStr]) -> ChildProcess {
    let mut command = genarm_command("genarm-rm-worker").unwrap();
    command.env("CANDLE_NUM_THREADS", "1").args(["--name", REWARD, "--listen", "127.0.0.1:0"]).args(args);
    ChildProcess::spawn(label, command).unwrap()
}

/// The worker's model id and its logits (f32) for `tokens` as one prefill step, retried until
/// the worker has loaded its model.
fn step_logits(worker: &mut ChildProcess, tokens: &[u32]) -> (String, Vec<f32>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = worker.wait_listening(deadline).unwrap_or_else(|e| panic!("{e:#}\n{}", worker.log_tail(30)));
    let url = format!("http://{addr}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = tokio::time::timeout(Duration::from_secs(10), WorkerClient::connect(url.clone()))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        loop {
            let req = StepRequest {
                reward_name: REWARD.into(),
                seqs: vec![SeqStep { seq_id: 1, start_pos: 0, tokens: tokens.to_vec() }],
                logits_dtype: LogitsDtype::F32 as i32,
                logits_len: 0,
                ..Default::default()
            };
            match tokio::time::timeout(Duration::from_secs(30), client.step(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    let result = resp.results.into_iter().next().expect("one result");
                    let bytes = match result.outcome {
                        Some(seq_result::Outcome::Logits(b)) => b,
                        other => panic!("{}: step failed: {other:?}", worker.name()),
                    };
                    let logits = bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>();
                    let info = client.info(InfoRequest {}).await.expect("Info").into_inner();
                    return (info.model_id, logits);
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {}
                Ok(Err(status)) => panic!("{}: Step: {status}\n{}", worker.name(), worker.log_tail(30)),
                Err(_) => panic!("{}: Step timed out", worker.name()),
            }
            assert!(
                Instant::now() < deadline && worker.is_running(),
                "{} did not load its model:\n{}",
                worker.name(),
                worker.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

fn merge(model: &Path, lora: Option<&Path>, out: &Path) {
    let mut command = genarm_command("genarm").unwrap();
    command.arg("merge").arg("--model").arg(model).arg("--out").arg(out);
    if let Some(l) = lora {
        command.arg("--lora").arg(l);
    }
    let mut child = ChildProcess::spawn("genarm merge", command).unwrap();
    let status = child.wait_exit(Instant::now() + Duration::from_secs(60)).unwrap();
    assert!(status.success(), "genarm merge failed:\n{}", child.log_tail(30));
}

#[test]
fn adapter_dir_backbone_plus_lora_and_merged_dir_serve_the_same_logits() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let backbone = fixture(BACKBONE);
    let adapter = tmp.path().join("arm-lora");
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    write_random_adapter(&backbone, &adapter, 4, &targets, 3, 0.5).unwrap();
    let merged = tmp.path().join("arm-merged");
    merge(&adapter, None, &merged);
    let merged_explicit = tmp.path().join("arm-merged-explicit");
    merge(&backbone, Some(&adapter), &merged_explicit);

    // All workers load at once, then each is asked in turn.
    let mut workers = [
        rm_worker("rm-worker adapter-dir", &["--model".as_ref(), adapter.as_os_str()]),
        rm_worker(
            "rm-worker backbone+lora",
            &["--model".as_ref(), backbone.as_os_str(), "--lora".as_ref(), adapter.as_os_str()],
        ),
        rm_worker("rm-worker merged", &["--model".as_ref(), merged.as_os_str()]),
        rm_worker("rm-worker merged-explicit", &["--model".as_ref(), merged_explicit.as_os_str()]),
        rm_worker("rm-worker backbone", &["--model".as_ref(), backbone.as_os_str()]),
    ];
    let assets = genarm_model::ModelAssets::open(&backbone).unwrap();
    let prompt = common::chatml_user("Tell me about the sea.");
    let tokens = assets.tokenizer.tokenizer.encode(prompt.as_str(), false).unwrap().get_ids().to_vec();
    assert!(tokens.len() > 5);

    let results: Vec<(String, Vec<f32>)> = workers.iter_mut().map(|w| step_logits(w, &tokens)).collect();
    let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["arm-lora", "arm-lora", "arm-merged", "arm-merged-explicit", BACKBONE]);
    let reference = &results[0].1;
    assert_eq!(reference.len(), assets.config.vocab_size);
    for (i, (id, logits)) in results.iter().enumerate().take(4).skip(1) {
        let d = max_diff(reference, logits);
        println!("{} ({id}) vs adapter dir: max |Δ logit| = {d:.2e}", workers[i].name());
        assert!(d <= 1e-5, "{}: {d}", workers[i].name());
    }
    let moved = max_diff(reference, &results[4].1);
    println!("adapter vs plain backbone: max |Δ logit| = {moved:.3}");
    assert!(moved > 0.5, "the adapter does not change the served logits ({moved})");
}

#[test]
fn a_hub_id_backbone_fails_at_startup_naming_the_fix() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("hub-arm");
    write_random_adapter(&fixture(BACKBONE), &adapter, 2, &["q_proj"], 3, 0.5).unwrap();
    let cfg_path = adapter.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = "meta-llama/Llama-3.2-1B".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut worker = rm_worker("rm-worker hub-id", &["--model".as_ref(), adapter.as_os_str()]);
    let status = worker.wait_exit(Instant::now() + Duration::from_secs(60)).unwrap();
    assert!(!status.success());
    let log = worker.log_tail(20);
    assert!(
        log.contains(
            "backbone 'meta-llama/Llama-3.2-1B' is not a local path: pass --model BACKBONE --lora ADAPTER"
        ),
        "{log}"
    );
}
