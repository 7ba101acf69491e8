//! What a run tells: the progress bar or plain log lines on stderr, `train_log.jsonl` (one
//! record per update and per evaluation), and `train_summary.json`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, TrainError};

use super::TrainConfig;

pub(super) const LOG_FILE: &str = "train_log.jsonl";
const SUMMARY_FILE: &str = "train_summary.json";

/// What a run did, also written to `OUT/train_summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The base model path.
    pub model: String,
    /// The data path.
    pub data: String,
    /// `lora` or `full`.
    pub mode: String,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Training pairs.
    pub train_pairs: usize,
    /// Held-out pairs.
    pub eval_pairs: usize,
    /// Records skipped for a prompt longer than `--max-len`.
    pub skipped_long_prompt: usize,
    /// Records skipped for an empty response.
    pub skipped_empty_response: usize,
    /// Responses truncated to `--max-len`.
    pub truncated_responses: usize,
    /// Optimizer updates in the whole run.
    pub steps: usize,
    /// The update this process started from (non-zero when resumed).
    pub resumed_from_step: usize,
    /// Wall time of the updates this process ran, seconds.
    pub train_time_s: f64,
    /// Tokens (prompt + response, both sequences of each pair) through forward and backward.
    pub train_tokens: usize,
    /// `train_tokens / train_time_s`.
    pub tokens_per_s: f64,
    /// Held-out loss before training (absent when resumed or with no held-out pairs).
    pub initial_eval_loss: Option<f64>,
    /// Held-out preference accuracy before training.
    pub initial_eval_accuracy: Option<f64>,
    /// Held-out loss at the end.
    pub final_eval_loss: Option<f64>,
    /// Held-out preference accuracy at the end: fraction of pairs with r(y_w) > r(y_l).
    pub final_eval_accuracy: Option<f64>,
    /// Mean training loss over the last update.
    pub final_train_loss: f64,
    /// Peak resident memory of the process (Linux), MiB.
    pub peak_rss_mib: Option<f64>,
}

impl TrainSummary {
    /// Writes the summary to `OUT/train_summary.json`.
    pub(super) fn write(&self, out: &Path) -> Result<()> {
        let path = out.join(SUMMARY_FILE);
        let text = serde_json::to_string_pretty(self).expect("the summary serializes") + "\n";
        std::fs::write(&path, text).map_err(|e| TrainError::io("writing", &path, e))
    }
}

/// Peak resident memory of the process (Linux), MiB.
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Progress output: a bar on a terminal, plain lines otherwise, nothing when quiet.
pub(super) struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    log_steps: usize,
}

impl Reporter {
    /// The reporter of a run of `total` updates starting after update `start`.
    pub(super) fn new(cfg: &TrainConfig, total: usize, start: usize) -> Self {
        let bar = (!cfg.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "train [{bar:30}] {pos}/{len} ({elapsed}<{eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(start as u64);
            bar
        });
        Self { bar, quiet: cfg.quiet, log_steps: cfg.log_steps.max(1) }
    }

    /// A line of its own (above the bar on a terminal).
    pub(super) fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Update `step` of `total` is done; `msg` says how it went.
    pub(super) fn step(&self, step: usize, total: usize, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(step as u64);
                b.set_message(msg.to_owned());
            }
            None if !self.quiet && (step % self.log_steps == 0 || step == total) => {
                eprintln!("step {step}/{total} {msg}")
            }
            None => {}
        }
    }

    /// Clears the bar.
    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Appends JSON lines to `OUT/train_log.jsonl`.
pub(super) struct Log {
    file: std::fs::File,
    path: PathBuf,
}

impl Log {
    /// Opens the log; on resume keeps only the records up to `keep_until` (steps after the
    /// checkpoint are recomputed).
    pub(super) fn open(out: &Path, keep_until: Option<usize>) -> Result<Self> {
        let path = out.join(LOG_FILE);
        let kept = match keep_until {
            Some(step) => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            None => String::new(),
        };
        std::fs::write(&path, kept).map_err(|e| TrainError::io("writing", &path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io("opening", &path, e))?;
        Ok(Self { file, path })
    }

    /// Appends the record `v`.
    pub(super) fn write(&mut self, v: &Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| TrainError::io("writing", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn steps(out: &Path) -> Vec<u64> {
        std::fs::read_to_string(out.join(LOG_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn a_resumed_log_keeps_the_records_up_to_its_checkpoint() {
        let out = tempfile::tempdir().unwrap();
        let mut log = Log::open(out.path(), None).unwrap();
        for step in [0, 1, 2, 2, 3] {
            log.write(&json!({ "step": step })).unwrap();
        }
        drop(log);
        let mut log = Log::open(out.path(), Some(2)).unwrap();
        assert_eq!(steps(out.path()), [0, 1, 2, 2]);
        log.write(&json!({ "step": 3 })).unwrap();
        assert_eq!(steps(out.path()), [0, 1, 2, 2, 3]);
        drop(log);
        Log::open(out.path(), None).unwrap();
        assert_eq!(steps(out.path()), Vec::<u64>::new(), "a fresh run starts an empty log");
    }
}
