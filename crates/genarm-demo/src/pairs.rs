//! Preference pairs for the demo ARMs: sample several responses per prompt from the base through
//! a running router, score them with the demo scorers, and keep (best, worst) per objective.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::scorers::Scorer;

/// How to sample the candidate responses.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Router base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// The served model name (from `/v1/models` when `None`).
    pub model: Option<String>,
    /// Responses per prompt.
    pub samples: usize,
    /// Longest response, in tokens.
    pub max_tokens: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Seed of the first sample of every prompt; sample i uses `seed + i`.
    pub seed: u64,
    /// Requests in flight.
    pub concurrency: usize,
}

/// One sampled response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Index of the prompt in the prompt file.
    pub prompt_index: usize,
    /// The user message.
    pub prompt: String,
    /// The request's seed.
    pub seed: u64,
    /// The response text.
    pub text: String,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// One preference pair, in the JSONL format `genarm train-arm` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pair {
    /// The user message.
    pub prompt: String,
    /// The preferred response.
    pub chosen: String,
    /// The other one.
    pub rejected: String,
    /// Scores of chosen and rejected.
    pub scores: [f64; 2],
}

/// Reads a router's `/v1/models` listing: (the base model's id, the reward models' ids). Entries
/// with `"role": "reward"` are reward models; the first other entry is the base.
pub fn parse_models_listing(body: &serde_json::Value) -> std::result::Result<(String, Vec<String>), String> {
    let data = body["data"].as_array().ok_or_else(|| format!("GET /v1/models: no `data` list in {body}"))?;
    let mut base = None;
    let mut rewards = Vec::new();
    for m in data {
        let id = m["id"].as_str().unwrap_or_default().to_string();
        match m["role"].as_str() {
            Some("reward") => rewards.push(id),
            _ if base.is_none() => base = Some(id),
            _ => {}
        }
    }
    let base = base.ok_or_else(|| "GET /v1/models lists no base model".to_string())?;
    Ok((base, rewards))
}

/// The served model's name, from `/v1/models`.
pub async fn served_model(client: &reqwest::Client, url: &str) -> Result<String> {
    let resp: serde_json::Value = client
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .with_context(|| format!("cannot reach the router at {url}"))?
        .error_for_status()?
        .json()
        .await?;
    parse_models_listing(&resp).map(|(base, _)| base).map_err(anyhow::Error::msg)
}

/// Samples `options.samples` responses to every prompt (unguided), retrying a failed request once.
pub async fn sample_all(prompts: &[String], options: &SampleOptions) -> Result<Vec<Sample>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let model = match &options.model {
        Some(m) => m.clone(),
        None => served_model(&client, &options.url).await?,
    };
    let jobs: Vec<(usize, u64)> =
        (0..prompts.len()).flat_map(|p| (0..options.samples as u64).map(move |s| (p, s))).collect();
    let total = jobs.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Sample>> = stream::iter(jobs)
        .map(|(p, s)| {
            let client = &client;
            let model = &model;
            let done = &done;
            async move {
                let seed = options.seed + s;
                let body = serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": prompts[p]}],
                    "max_tokens": options.max_tokens,
                    "temperature": options.temperature,
                    "seed": seed,
                });
                let mut last = None;
                for _attempt in 0..2 {
                    match chat(client, &options.url, &body).await {
                        Ok((text, finish_reason)) => {
                            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                            if n % 50 == 0 || n == total {
                                eprintln!("make-pairs: sampled {n}/{total}");
                            }
                            return Ok(Sample {
                                prompt_index: p,
                                prompt: prompts[p].clone(),
                                seed,
                                text,
                                finish_reason,
                            });
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("two attempts were made"))
            }
        })
        .buffered(options.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn chat(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Result<(String, String)> {
    let resp = client.post(format!("{url}/v1/chat/completions")).json(body).send().await?;
    let status = resp.status();
    let json: serde_json::Value = resp.json().await?;
    if !status.is_success() {
        bail!("the router answered {status}: {json}");
    }
    let choice = &json["choices"][0];
    let text = choice["message"]["content"].as_str().context("no message content in the reply")?;
    Ok((text.to_owned(), choice["finish_reason"].as_str().unwrap_or("").to_owned()))
}

/// For every prompt, pairs its best- and worst-scoring samples under `scorer`; prompts whose
/// samples all score the same give no pair.
pub fn pairs_for(samples: &[Sample], scorer: &dyn Scorer) -> Vec<Pair> {
    pairs_with(samples, scorer, false)
}

/// [`pairs_for`], where with `require_finished` only responses that ended by themselves (EOS or
/// a stop string, not cut by `max_tokens`) may be chosen: a truncated answer is not concise,
/// whatever it scores.
pub fn pairs_with(samples: &[Sample], scorer: &dyn Scorer, require_finished: bool) -> Vec<Pair> {
    let mut by_prompt: BTreeMap<usize, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_prompt.entry(s.prompt_index).or_default().push(s);
    }
    let mut pairs = Vec::new();
    for group in by_prompt.values() {
        let scored: Vec<(f64, &Sample)> = group.iter().map(|s| (scorer.score(&s.text), *s)).collect();
        // Ties keep the earliest seed, so the choice is deterministic.
        let best = scored.iter().filter(|x| !require_finished || x.1.finish_reason == "stop").fold(
            None::<&(f64, &Sample)>,
            |b, x| match b {
                Some(b) if b.0 >= x.0 => Some(b),
                _ => Some(x),
            },
        );
        let worst = scored.iter().fold(None::<&(f64, &Sample)>, |w, x| match w {
            Some(w) if w.0 <= x.0 => Some(w),
            _ => Some(x),
        });
        if let (Some(best), Some(worst)) = (best, worst) {
            if best.0 > worst.0 {
                pairs.push(Pair {
                    prompt: best.1.prompt.clone(),
                    chosen: best.1.text.clone(),
                    rejected: worst.1.text.clone(),
                    scores: [best.0, worst.0],
                });
            }
        }
    }
    pairs
}

/// Writes records as JSONL.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorers::{Concise, Upbeat};

    fn sample(p: usize, seed: u64, text: &str) -> Sample {
        Sample {
            prompt_index: p,
            prompt: format!("p{p}"),
            seed,
            text: text.into(),
            finish_reason: "stop".into(),
        }
    }

    #[test]
    fn pairs_take_the_best_and_worst_and_skip_ties() {
        let samples = vec![
            sample(0, 1, "It is fine."),
            sample(0, 2, "Great! I love it!"),
            sample(0, 3, "Wonderful."),
            sample(1, 1, "Same words here."),
            sample(1, 2, "Same words there."),
        ];
        let up = pairs_for(&samples, &Upbeat);
        assert_eq!(up.len(), 1, "prompt 1 has no upbeat difference");
        assert_eq!(up[0].chosen, "Great! I love it!");
        assert_eq!(up[0].rejected, "It is fine.");
        assert_eq!(up[0].scores, [4.0, 0.0]);

        let concise = pairs_for(&samples, &Concise);
        assert_eq!(concise.len(), 1);
        assert_eq!(concise[0].chosen, "Wonderful.");
        // "It is fine." and "Great! I love it!" both have 3+ words; the longest is the latter.
        assert_eq!(concise[0].rejected, "Great! I love it!");

        // Only finished responses may be chosen: a cut one loses even when it scores best.
        let mut cut = samples.clone();
        cut[2].finish_reason = "length".into();
        let finished = pairs_with(&cut, &Concise, true);
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].chosen, "It is fine.");
        cut.iter_mut().for_each(|s| s.finish_reason = "length".into());
        assert!(pairs_with(&cut, &Concise, true).is_empty());
    }
}
