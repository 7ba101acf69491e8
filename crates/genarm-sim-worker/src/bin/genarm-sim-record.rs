//! `genarm-sim-record`: records the logit rows a simulation worker answers with, from real models.
//! The base (e.g. SmolLM2-135M-Instruct) greedily answers each prompt (rendered with its chat
//! template); then the base and every ARM (the base with a LoRA adapter, or any model sharing
//! its tokenizer) score the whole conversation in one full forward, and the rows at every answer
//! position are written as tensors `base` and `arm.<NAME>` ([`RowBank::write`], F16). The rows of
//! one position come from the same text on every model, so the simulated base and ARMs disagree
//! exactly as the real ones do.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;
use genarm_model::{Engine, EngineOptions, ModelAssets, StepSeq};
use genarm_sim_worker::RowBank;
use genarm_text::{ChatMessage, ModelText};

/// Records logit rows from real models for `genarm-sim-worker --rows`.
#[derive(Debug, Parser)]
#[command(name = "genarm-sim-record", version, about)]
struct RecordArgs {
    /// The base model (a `.gguf` file or a HF directory).
    #[arg(long, env = "GENARM_MODEL", value_name = "PATH")]
    model: PathBuf,

    /// A reward model as NAME=LORA_DIR (a LoRA adapter on the base), repeatable.
    #[arg(long = "arm", value_name = "NAME=DIR")]
    arms: Vec<String>,

    /// Prompts, one JSON object with a "prompt" field per line (e.g. demo/data/eval.jsonl).
    #[arg(long, value_name = "FILE")]
    prompts: PathBuf,

    /// How many prompts to use (the first N).
    #[arg(long, default_value_t = 16)]
    max_prompts: usize,

    /// Tokens the base generates per prompt (each is one recorded row per model).
    #[arg(long, default_value_t = 24)]
    answer_tokens: usize,

    /// Where to write the rows (safetensors).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(RecordArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("genarm-sim-record: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens and loads one model (the base alone, or the base with a LoRA adapter).
fn load(model: &std::path::Path, lora: Option<&std::path::Path>) -> anyhow::Result<(ModelAssets, Engine)> {
    let assets = match lora {
        None => ModelAssets::open(model),
        Some(l) => ModelAssets::open_with_lora(model, l),
    }
    .with_context(|| format!("opening {}", model.display()))?;
    let engine = Engine::load(&assets, EngineOptions::default()).context("loading the weights")?;
    Ok((assets, engine))
}

/// Every position's logits of `tokens` from `row_from` on, as rows.
fn rows_of(engine: &Engine, tokens: &[u32], row_from: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let all: Vec<Vec<f32>> = engine.forward_full(tokens)?.to_vec2()?;
    Ok(all.into_iter().skip(row_from).collect())
}

fn run(args: RecordArgs) -> anyhow::Result<()> {
    let prompts = genarm_demo::prompts::read_prompt_file(&args.prompts)?;
    let prompts: Vec<String> = prompts.into_iter().take(args.max_prompts).collect();
    if prompts.is_empty() {
        bail!("{} holds no prompts", args.prompts.display());
    }
    let (assets, base) = load(&args.model, None)?;
    let tok = &assets.tokenizer;
    let text = ModelText::new(
        &assets.model_id,
        &tok.json,
        tok.chat_template.clone(),
        tok.bos_token_id,
        tok.eos_token_ids.clone(),
        tok.add_bos_token,
    )?;
    // The conversations: each prompt rendered, then the base's greedy answer.
    let mut conversations = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let rendered = text.render_chat(&[ChatMessage::new("user", prompt.as_str())], true)?;
        let mut tokens = text.encode_prompt(&rendered)?;
        let prompt_len = tokens.len();
        let seq_id = i as u64;
        let mut next = tokens.clone();
        for _ in 0..args.answer_tokens {
            let start_pos = tokens.len() - next.len();
            let out = base.step(vec![StepSeq { seq_id, start_pos, tokens: next }])?;
            let logits = out.results.into_iter().next().context("no result")??;
            let id = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            tokens.push(id as u32);
            next = vec![id as u32];
        }
        base.release(seq_id);
        eprintln!("prompt {}/{}: {} + {} tokens", i + 1, prompts.len(), prompt_len, args.answer_tokens);
        conversations.push((tokens, prompt_len - 1));
    }
    let mut banks: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    let mut rows = Vec::new();
    for (tokens, from) in &conversations {
        rows.extend(rows_of(&base, &tokens[..tokens.len() - 1], *from)?);
    }
    banks.push(("base".into(), rows));
    drop(base);
    for arm in &args.arms {
        let (name, dir) = arm.split_once('=').with_context(|| format!("--arm {arm}: expected NAME=DIR"))?;
        let (_, engine) = load(&args.model, Some(std::path::Path::new(dir)))?;
        let mut rows = Vec::new();
        for (tokens, from) in &conversations {
            rows.extend(rows_of(&engine, &tokens[..tokens.len() - 1], *from)?);
        }
        banks.push((format!("arm.{name}"), rows));
    }
    let tensors: Vec<(&str, &[Vec<f32>])> = banks.iter().map(|(n, r)| (n.as_str(), r.as_slice())).collect();
    RowBank::write(&args.out, &tensors)?;
    eprintln!(
        "wrote {} rows of {} logits for {} to {}",
        banks[0].1.len(),
        banks[0].1.first().map(Vec::len).unwrap_or(0),
        banks.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
        args.out.display()
    );
    Ok(())
}
