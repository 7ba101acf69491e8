//! Times one training micro-batch on a real model: forward without gradients, forward with
//! gradients, and backward, for `pairs` pairs of `len`-token sequences.
//!
//! `cargo run --release -p genarm-train --example train_step_bench -- MODEL [PAIRS] [PROMPT] [RESPONSE] [REPS]`

use std::time::Instant;

use candle_core::{DType, Device};
use genarm_train::data::PairExample;
use genarm_train::loss::preference_loss;
use genarm_train::trainer::pair_logprobs;
use genarm_train::{LoraSpec, Target, TrainModel, Trainable};

/// Resident and peak resident memory of this process, MiB (Linux).
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| format!("{:.0}", kb / 1024.0))
            .unwrap_or_else(|| "?".into())
    };
    format!("RSS {} MiB (peak {} MiB)", get("VmRSS:"), get("VmHWM:"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = args.get(1).ok_or("usage: train_step_bench MODEL [PAIRS] [PROMPT] [RESPONSE] [REPS]")?;
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (pairs, prompt, response, reps) = (num(2, 2), num(3, 40), num(4, 60), num(5, 3));
    let assets = genarm_model::ModelAssets::open(std::path::Path::new(model_path))?;
    let spec = LoraSpec { rank: 8, alpha: 16.0, targets: Target::ALL.to_vec(), use_rslora: false };
    let model = TrainModel::new(
        &assets.config,
        assets.tensors.as_ref(),
        Trainable::Lora(spec),
        0,
        DType::F32,
        &Device::Cpu,
    )?;
    let vocab = assets.config.vocab_size as u32;
    let ids = |n: usize, s: u32| {
        (0..n as u32).map(|i| (i * 7919 + s * 104_729) % (vocab - 1) + 1).collect::<Vec<_>>()
    };
    let data: Vec<PairExample> = (0..pairs as u32)
        .map(|i| PairExample {
            line: 1,
            prompt: ids(prompt, i),
            chosen: ids(response, i + 100),
            rejected: ids(response, i + 200),
        })
        .collect();
    println!("model loaded: {}", rss());
    let refs: Vec<&PairExample> = data.iter().collect();
    let tokens = pairs * 2 * (prompt + response);
    for rep in 0..reps {
        let t = Instant::now();
        let _ = pair_logprobs(&model, &refs, false)?;
        let fwd = t.elapsed().as_secs_f64();
        println!("  after forward without gradients: {}", rss());
        let t = Instant::now();
        let (c, r, _) = pair_logprobs(&model, &refs, true)?;
        let loss = preference_loss(&c, &r, 0.05, 0.0)?.sum_all()?;
        let fwd_g = t.elapsed().as_secs_f64();
        println!("  after forward with gradients: {}", rss());
        let t = Instant::now();
        let _grads = loss.backward()?;
        let bwd = t.elapsed().as_secs_f64();
        println!(
            "rep {rep}: {tokens} tokens: forward (no grad) {fwd:.2} s, forward (grad) {fwd_g:.2} s, backward {bwd:.2} s => {:.1} tokens/s fwd+bwd",
            tokens as f64 / (fwd_g + bwd)
        );
        println!("after rep {rep}: {}", rss());
    }
    Ok(())
}
