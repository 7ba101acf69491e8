//! Generation over the router's HTTP API: for every combination, prompt and sample, one seeded
//! `/v1/chat/completions` request (retried once on failure), `concurrency` at a time, with a
//! progress bar. Failures are kept as samples with an error, never dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::grid::Combo;
use crate::EvalError;

/// How requests are made.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// The router's base URL (`http://host:port`).
    pub url: String,
    /// The served base model's name (`model` of every request).
    pub model: String,
    /// Samples per prompt and combination; sample i has seed `seed + i`.
    pub samples: usize,
    /// The first seed.
    pub seed: u64,
    /// `max_tokens` of every request.
    pub max_tokens: usize,
    /// `temperature` of every request.
    pub temperature: f64,
    /// `top_p`, when set.
    pub top_p: Option<f64>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
}

/// One generated (or failed) output.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// The combination's id.
    pub combo: usize,
    /// The prompt's index in the prompt file.
    pub prompt: usize,
    /// Sample index (0..samples).
    pub sample: usize,
    /// The request's seed.
    pub seed: u64,
    /// The output text; `None` when the request failed.
    pub text: Option<String>,
    /// `finish_reason`.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`: generated tokens as the router counted them.
    pub completion_tokens: Option<u64>,
    /// Words of the output (runs of letters, digits and apostrophes).
    pub words: Option<usize>,
    /// Score per objective.
    pub scores: BTreeMap<String, f64>,
    /// Mean log-prob per output token under the base model (`--base-model`).
    pub base_logprob_per_token: Option<f64>,
    /// Requests made (1, or 2 after a retry).
    pub attempts: u32,
    /// The last error, when the request failed both times.
    pub error: Option<String>,
}

/// The request body of a sample: a chat completion with one user message, seeded, with
/// `guidance.rewards` = the combination's non-zero weights (no `guidance` field when unguided).
pub fn request_body(opts: &GenOptions, combo: &Combo, prompt: &str, seed: u64) -> Value {
    let mut body = json!({
        "model": opts.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": opts.max_tokens,
        "temperature": opts.temperature,
        "seed": seed,
    });
    if let Some(p) = opts.top_p {
        body["top_p"] = json!(p);
    }
    if !combo.rewards.is_empty() {
        body["guidance"] = json!({ "rewards": combo.rewards });
    }
    body
}

/// An HTTP client for the router.
pub fn client(timeout: Duration) -> Result<reqwest::Client, EvalError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| EvalError::Usage(format!("cannot build the HTTP client: {e}")))
}

/// Asks `GET /v1/models` for the base model's name and the reward models' names.
pub async fn models(client: &reqwest::Client, url: &str) -> Result<(String, Vec<String>), EvalError> {
    let err = |reason: String| EvalError::Router { url: url.to_string(), reason };
    let resp =
        client.get(format!("{url}/v1/models")).send().await.map_err(|e| {
            err(format!("GET /v1/models failed: {e}; is the router running (genarm launch)?"))
        })?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| err(format!("GET /v1/models: bad JSON: {e}")))?;
    if !status.is_success() {
        return Err(err(format!("GET /v1/models answered {status}: {body}")));
    }
    genarm_demo::pairs::parse_models_listing(&body).map_err(err)
}

/// What one successful request gave.
struct Output {
    text: String,
    finish_reason: Option<String>,
    completion_tokens: Option<u64>,
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Output, String> {
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(format!("HTTP {}: {message}", status.as_u16()));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad JSON answer: {e}"))?;
    let choice = &v["choices"][0];
    let content = choice["message"]["content"]
        .as_str()
        .ok_or_else(|| format!("no choices[0].message.content in {v}"))?
        .to_string();
    Ok(Output {
        text: content,
        finish_reason: choice["finish_reason"].as_str().map(str::to_string),
        completion_tokens: v["usage"]["completion_tokens"].as_u64(),
    })
}

/// Runs every (combination, prompt, sample) request, `opts.concurrency` at a time, each retried
/// once on failure. Returns the samples in (combo, prompt, sample) order, unscored.
pub async fn generate(
    opts: &GenOptions,
    combos: &[Combo],
    prompts: &[String],
) -> Result<Vec<Sample>, EvalError> {
    let client = client(opts.request_timeout)?;
    let mut jobs = Vec::new();
    for c in combos {
        for (p, _) in prompts.iter().enumerate() {
            for i in 0..opts.samples {
                jobs.push((c, p, i));
            }
        }
    }
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests ({per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut samples: Vec<Sample> = futures::stream::iter(jobs.into_iter().map(|(c, p, i)| {
        let client = &client;
        let bar = &bar;
        async move {
            let seed = opts.seed + i as u64;
            let body = request_body(opts, c, &prompts[p], seed);
            let mut sample = Sample {
                combo: c.id,
                prompt: p,
                sample: i,
                seed,
                text: None,
                finish_reason: None,
                completion_tokens: None,
                words: None,
                scores: BTreeMap::new(),
                base_logprob_per_token: None,
                attempts: 0,
                error: None,
            };
            for _ in 0..2 {
                sample.attempts += 1;
                match post(client, &opts.url, &body).await {
                    Ok(out) => {
                        sample.words = Some(genarm_demo::scorers::words(&out.text).count());
                        sample.text = Some(out.text);
                        sample.finish_reason = out.finish_reason;
                        sample.completion_tokens = out.completion_tokens;
                        sample.error = None;
                        break;
                    }
                    Err(e) => sample.error = Some(e),
                }
            }
            if let Some(e) = &sample.error {
                bar.println(format!("request failed twice ({} prompt {p} seed {seed}): {e}", c.label));
                bar.set_message("(failures)");
            }
            bar.inc(1);
            sample
        }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .collect()
    .await;
    bar.finish_and_clear();
    samples.sort_by_key(|s| (s.combo, s.prompt, s.sample));
    Ok(samples)
}

/// Scores every successful sample with every scorer of the demo.
pub fn score(samples: &mut [Sample]) {
    for s in samples {
        if let Some(text) = &s.text {
            for scorer in genarm_demo::scorers::all() {
                s.scores.insert(scorer.name().to_string(), scorer.score(text));
            }
        }
    }
}
