//! The engine against independent transformers goldens (tests/goldens/, written by scripts/make-goldens.sh).
//!
//! For each committed fixture and for the SmolLM2-135M-Instruct GGUF, the goldens hold the prompt
//! texts, the token ids transformers produced for them (`add_special_tokens=False`, i.e. no BOS and
//! no post-processor: the same as `Tokenizer::encode(text, false)`), and the f32 logits transformers
//! computed at every position (CPU, float32, eager attention; the GGUF dequantized by transformers).
//! Each test checks that our tokenizer gives exactly those ids, that `Engine::forward_full` matches
//! the logits, and that the cached path (`Engine::step`, the prompt fed in two chunks) gives the
//! golden's last row.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use genarm_model::golden::{self, Golden};
use genarm_model::{Engine, EngineOptions, ModelAssets, StepSeq};
use sha2::Digest;

/// Max |Δ logit| allowed for the f32 fixtures (full forward and cached path).
const FIXTURE_TOL: f32 = 1e-4;
/// Max |Δ logit| allowed for the SmolLM2 GGUF (full forward and cached path).
const SMOLLM2_TOL: f32 = 2e-3;

fn load_golden(name: &str) -> Result<Golden> {
    Ok(golden::load(&golden::committed_dir(), name)?)
}

/// Max |a - b| and where it is; an error on NaN or length mismatch.
fn max_abs_diff(a: &[f32], b: &[f32]) -> Result<(f32, usize)> {
    ensure!(a.len() == b.len(), "length {} vs {}", a.len(), b.len());
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() {
            bail!("NaN at flat index {i}: ours {x}, golden {y}");
        }
        if d > worst.0 {
            worst = (d, i);
        }
    }
    Ok(worst)
}

/// Worst deltas measured over one golden.
#[derive(Debug, Default)]
struct Deltas {
    full: f32,
    cached: f32,
}

fn check_golden(name: &str, model_path: &Path, tol: f32) -> Result<Deltas> {
    let golden = load_golden(name)?;
    println!("{name}: goldens from {}", golden.versions);
    let assets =
        ModelAssets::open(model_path).map_err(|e| anyhow!("opening {}: {e}", model_path.display()))?;
    ensure!(
        assets.config.vocab_size == golden.vocab_size,
        "{name}: model vocab {} but golden vocab {}",
        assets.config.vocab_size,
        golden.vocab_size
    );

    // Tokenizer: exactly the golden ids, no BOS.
    for (i, p) in golden.prompts.iter().enumerate() {
        let enc = assets
            .tokenizer
            .tokenizer
            .encode(p.text.as_str(), false)
            .map_err(|e| anyhow!("{name}: encode: {e}"))?;
        let ids = enc.get_ids();
        ensure!(
            ids == p.ids.as_slice(),
            "{name} prompt {i} {:?}: our ids {:?} ({:?}) differ from transformers' {:?}",
            p.text,
            ids,
            enc.get_tokens(),
            p.ids
        );
    }

    let engine =
        Engine::load(&assets, EngineOptions::default()).map_err(|e| anyhow!("{name}: Engine::load: {e}"))?;
    let vocab = golden.vocab_size;
    let mut deltas = Deltas::default();
    for (i, (p, want)) in golden.prompts.iter().zip(&golden.logits).enumerate() {
        let len = p.ids.len();

        // Full forward, every position.
        let got = engine.forward_full(&p.ids).map_err(|e| anyhow!("{name}: forward_full: {e}"))?;
        ensure!(
            got.dims() == [len, vocab],
            "{name} prompt {i}: forward_full shape {:?}, expected [{len}, {vocab}]",
            got.dims()
        );
        let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
        let (d, at) = max_abs_diff(&got, want).with_context(|| format!("{name} prompt {i} full forward"))?;
        println!(
            "{name} prompt {i} ({len} tokens): full forward max |Δ logit| = {d:.3e} (position {}, token {})",
            at / vocab,
            at % vocab
        );
        ensure!(
            d <= tol,
            "{name} prompt {i}: full forward max |Δ logit| {d:.3e} > {tol:.0e} at position {} token {}: ours {}, transformers {}",
            at / vocab,
            at % vocab,
            got[at],
            want[at]
        );
        deltas.full = deltas.full.max(d);

        // Cached path: the prompt in two chunks through the KV cache.
        let seq_id = 1000 + i as u64;
        let split = len.div_ceil(2);
        let mut chunks = vec![(0, split)];
        if split < len {
            chunks.push((split, len));
        }
        for (start, end) in chunks {
            let out = engine
                .step(vec![StepSeq { seq_id, start_pos: start, tokens: p.ids[start..end].to_vec() }])
                .map_err(|e| anyhow!("{name}: step: {e}"))?;
            let row = out
                .results
                .into_iter()
                .next()
                .context("step returned no result")?
                .map_err(|e| anyhow!("{name}: step: {e}"))?;
            let want_row = &want[(end - 1) * vocab..end * vocab];
            let (d, at) =
                max_abs_diff(&row, want_row).with_context(|| format!("{name} prompt {i} cached step"))?;
            println!("{name} prompt {i}: cached step [{start}..{end}) last-position max |Δ logit| = {d:.3e}");
            ensure!(
                d <= tol,
                "{name} prompt {i}: cached step [{start}..{end}) max |Δ logit| {d:.3e} > {tol:.0e} at token {at}: ours {}, transformers {}",
                row[at],
                want_row[at]
            );
            deltas.cached = deltas.cached.max(d);
        }
        ensure!(engine.release(seq_id), "{name}: release({seq_id}) found no sequence");
    }
    println!(
        "{name}: worst full-forward |Δ| {:.3e}, worst cached |Δ| {:.3e} (tolerance {tol:.0e})",
        deltas.full, deltas.cached
    );
    Ok(deltas)
}

/// Fails clearly when a fixture was regenerated after its golden was written.
fn check_fixture_unchanged(name: &str, dir: &Path) -> Result<()> {
    let golden = load_golden(name)?;
    let hashes = golden.source["sha256"].as_object().context("golden source has no sha256 map")?;
    ensure!(!hashes.is_empty(), "{name}: golden source lists no fixture file hashes");
    for (file, want) in hashes {
        let bytes =
            std::fs::read(dir.join(file)).with_context(|| format!("reading {}", dir.join(file).display()))?;
        let got = hex::encode(sha2::Sha256::digest(&bytes));
        ensure!(
            want.as_str() == Some(got.as_str()),
            "{}: SHA-256 {got} but golden {name} was made from {want}: the fixture changed, rerun scripts/make-goldens.sh",
            dir.join(file).display()
        );
    }
    Ok(())
}

fn check_fixture(name: &str) -> Result<()> {
    let dir = genarm_testkit::fixture_dir(name);
    ensure!(dir.join("config.json").is_file(), "fixture {} is missing", dir.display());
    check_fixture_unchanged(name, &dir)?;
    let golden = load_golden(name)?;
    let texts: Vec<&str> = golden.prompts.iter().map(|p| p.text.as_str()).collect();
    ensure!(
        texts == genarm_testkit::PROMPTS,
        "{name}: golden prompts {texts:?} differ from genarm_testkit::PROMPTS {:?}: rerun scripts/make-goldens.sh",
        genarm_testkit::PROMPTS
    );
    check_golden(name, &dir, FIXTURE_TOL).map(|_| ())
}

#[test]
fn llama_mha_matches_transformers() -> Result<()> {
    check_fixture("llama-mha")
}

#[test]
fn llama_gqa_tied_matches_transformers() -> Result<()> {
    check_fixture("llama-gqa-tied")
}

#[test]
fn qwen2_bias_matches_transformers() -> Result<()> {
    check_fixture("qwen2-bias")
}

/// The real model: fails (does not skip) when the GGUF is absent, since CI fetches it first.
#[test]
fn smollm2_gguf_matches_transformers() -> Result<()> {
    let path = genarm_testkit::smollm2::gguf_path()?;
    genarm_testkit::smollm2::verify_checksum(&path)?;
    check_golden("smollm2-135m-instruct", &path, SMOLLM2_TOL).map(|_| ())
}
