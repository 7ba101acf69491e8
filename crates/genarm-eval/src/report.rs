//! The report: per combination and objective the mean score with its 95% interval and the win
//! rate against unguided decoding on the same prompt and seed; length and base log-prob; written
//! as `eval.json` (everything, raw outputs included), `eval.md` and PNG plots.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::generate::Sample;
use crate::grid::{Axis, Combo, ComboKind};
use crate::stats::{mean_ci, win_rate, Estimate};
use crate::EvalError;
use genarm_demo::provenance::Provenance;

/// One objective: a scorer of the demo.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Objective {
    /// The scorer's name.
    pub name: String,
    /// What it counts.
    pub describe: String,
}

/// One objective's figures in a row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectiveStats {
    /// The objective.
    pub objective: String,
    /// Mean score with its 95% normal-approximation interval.
    pub mean: Estimate,
    /// Share of (prompt, seed) pairs where this row's output scores higher than the unguided
    /// one (ties count half), with its 95% Wilson interval.
    pub win_rate_vs_unguided: Estimate,
}

/// One weight combination's aggregate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The combination.
    pub combo: Combo,
    /// Outputs obtained.
    pub n_ok: usize,
    /// Requests that failed after their retry.
    pub n_failed: usize,
    /// Per objective.
    pub objectives: Vec<ObjectiveStats>,
    /// Mean `usage.completion_tokens`.
    pub mean_tokens: Option<f64>,
    /// Mean word count.
    pub mean_words: Option<f64>,
    /// Mean over outputs of the base model's mean log-prob per token (with `--base-model`).
    pub mean_base_logprob_per_token: Option<f64>,
}

/// How the evaluation was run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// The router's URL.
    pub url: String,
    /// The served base model's name.
    pub model: String,
    /// The grid axes.
    pub grid: Vec<Axis>,
    /// The control reward model.
    pub control: Option<String>,
    /// Samples per prompt and combination.
    pub samples: usize,
    /// First seed.
    pub seed: u64,
    /// `max_tokens`.
    pub max_tokens: usize,
    /// `temperature`.
    pub temperature: f64,
    /// `top_p`, when set.
    pub top_p: Option<f64>,
    /// The base model used for log-probs, if any.
    pub base_model: Option<String>,
    /// Wall time of the generation, seconds.
    pub generation_seconds: f64,
}

/// Everything `eval.json` holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The command line, the genarm commit and the hashes of the model files named.
    pub provenance: Provenance,
    /// How it was run.
    pub run: RunInfo,
    /// The objectives scored.
    pub objectives: Vec<Objective>,
    /// The prompts, by index.
    pub prompts: Vec<String>,
    /// The aggregated table, one row per combination in run order.
    pub rows: Vec<Row>,
    /// Requests that failed after their retry.
    pub failures: usize,
    /// Every output (and failure) with its scores.
    pub outputs: Vec<Sample>,
}

fn mean_of(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = xs.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Aggregates scored samples into one [`Row`] per combination.
pub fn aggregate(combos: &[Combo], objectives: &[Objective], samples: &[Sample]) -> Vec<Row> {
    let unguided_id = combos.iter().find(|c| c.kind == ComboKind::Unguided).map(|c| c.id);
    // (prompt, sample) -> unguided scores.
    let baseline: HashMap<(usize, usize), &BTreeMap<String, f64>> = samples
        .iter()
        .filter(|s| Some(s.combo) == unguided_id && s.text.is_some())
        .map(|s| ((s.prompt, s.sample), &s.scores))
        .collect();
    combos
        .iter()
        .map(|c| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.combo == c.id).collect();
            let ok: Vec<&Sample> = mine.iter().copied().filter(|s| s.text.is_some()).collect();
            let objectives = objectives
                .iter()
                .map(|o| {
                    let scores: Vec<f64> = ok.iter().filter_map(|s| s.scores.get(&o.name).copied()).collect();
                    let pairs = ok.iter().filter_map(|s| {
                        let base = baseline.get(&(s.prompt, s.sample))?.get(&o.name)?;
                        Some((*s.scores.get(&o.name)?, *base))
                    });
                    ObjectiveStats {
                        objective: o.name.clone(),
                        mean: mean_ci(&scores),
                        win_rate_vs_unguided: win_rate(pairs),
                    }
                })
                .collect();
            Row {
                combo: c.clone(),
                n_ok: ok.len(),
                n_failed: mine.len() - ok.len(),
                objectives,
                mean_tokens: mean_of(ok.iter().filter_map(|s| s.completion_tokens.map(|t| t as f64))),
                mean_words: mean_of(ok.iter().filter_map(|s| s.words.map(|w| w as f64))),
                mean_base_logprob_per_token: mean_of(ok.iter().filter_map(|s| s.base_logprob_per_token)),
            }
        })
        .collect()
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "—".into()
    }
}

fn est(e: &Estimate) -> String {
    if !e.value.is_finite() {
        return "—".into();
    }
    if e.low.is_finite() && e.high.is_finite() {
        format!("{} [{}, {}]", num(e.value), num(e.low), num(e.high))
    } else {
        num(e.value)
    }
}

/// Rows in table order: unguided first, then each ARM row followed by its control row (the
/// run order already is this).
fn table_order(rows: &[Row]) -> Vec<&Row> {
    let mut v: Vec<&Row> = rows.iter().collect();
    v.sort_by_key(|r| (r.combo.kind != ComboKind::Unguided, r.combo.id));
    v
}

/// The Markdown report.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let r = &report.run;
    let _ = writeln!(s, "# genarm eval\n");
    let _ = writeln!(s, "```\n{}\n```\n", shell_join(&report.provenance.command));
    let _ = writeln!(s, "Provenance: {}\n", report.provenance.summary());
    let _ = writeln!(
        s,
        "Model `{}` at {}; {} prompts × {} samples (seeds {}..{}), max_tokens {}, temperature {}{}.",
        r.model,
        r.url,
        report.prompts.len(),
        r.samples,
        r.seed,
        r.seed + r.samples as u64 - 1,
        r.max_tokens,
        r.temperature,
        r.top_p.map(|p| format!(", top_p {p}")).unwrap_or_default()
    );
    if let Some(c) = &r.control {
        let _ = writeln!(
            s,
            "Control rows guide with `{c}` (the untuned backbone) at the ARM's weight: π_base·π_base^α only \
             sharpens the base, so an ARM row that beats its control shows alignment, not lower temperature."
        );
    }
    let _ = writeln!(
        s,
        "Means with 95% normal-approximation intervals; win rate = share of (prompt, seed) pairs whose output \
         scores above the unguided output (ties half), 95% Wilson interval. Generation took {:.1} s.\n",
        r.generation_seconds
    );
    for o in &report.objectives {
        let _ = writeln!(s, "- **{}**: {}", o.name, o.describe);
    }
    let _ = writeln!(s);
    s.push_str(&markdown_table(report));
    let _ = writeln!(s);
    if report.failures > 0 {
        let _ = writeln!(
            s,
            "**{} requests failed after a retry**; they are excluded from the means:\n",
            report.failures
        );
        for f in report.outputs.iter().filter(|o| o.error.is_some()) {
            let label = report
                .rows
                .iter()
                .find(|r| r.combo.id == f.combo)
                .map(|r| r.combo.label.as_str())
                .unwrap_or("?");
            let _ = writeln!(
                s,
                "- {label}, prompt {}, seed {}: {}",
                f.prompt,
                f.seed,
                f.error.as_deref().unwrap_or_default()
            );
        }
    } else {
        let _ = writeln!(s, "No request failed.");
    }
    s
}

/// The table alone (also printed by `genarm eval`).
pub fn markdown_table(report: &Report) -> String {
    let mut s = String::new();
    let mut header = "| weights | kind | n |".to_string();
    let mut rule = "|---|---|---:|".to_string();
    for o in &report.objectives {
        let _ = write!(header, " {} mean [95% CI] | {} win vs unguided [95% CI] |", o.name, o.name);
        rule.push_str("---:|---:|");
    }
    header.push_str(" tokens | words | base log-prob/token |");
    rule.push_str("---:|---:|---:|");
    let _ = writeln!(s, "{header}\n{rule}");
    for row in table_order(&report.rows) {
        let kind = match row.combo.kind {
            ComboKind::Unguided => "unguided",
            ComboKind::Arm => "ARM",
            ComboKind::Control => "control",
        };
        let n = if row.n_failed > 0 {
            format!("{} ({} failed)", row.n_ok, row.n_failed)
        } else {
            row.n_ok.to_string()
        };
        let _ = write!(s, "| {} | {kind} | {n} |", row.combo.label);
        for o in &row.objectives {
            let win = if row.combo.kind == ComboKind::Unguided {
                "—".into()
            } else {
                est(&o.win_rate_vs_unguided)
            };
            let _ = write!(s, " {} | {} |", est(&o.mean), win);
        }
        let opt = |x: Option<f64>| x.map(num).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            " {} | {} | {} |",
            opt(row.mean_tokens),
            opt(row.mean_words),
            opt(row.mean_base_logprob_per_token)
        );
    }
    s
}

/// Quotes a command line for display.
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `(low, high)` of an estimate for an error bar; the value itself when the interval is undefined.
fn bar(e: &Estimate) -> (f64, f64) {
    if e.low.is_finite() && e.high.is_finite() {
        (e.low, e.high)
    } else {
        (e.value, e.value)
    }
}

fn objective_stats<'a>(row: &'a Row, name: &str) -> Option<&'a ObjectiveStats> {
    row.objectives.iter().find(|o| o.objective == name)
}

/// Whether a chart was drawn: a chart with no finite value (every request failed) is skipped.
fn drawn(r: genarm_plot::Result<()>) -> Result<bool, EvalError> {
    match r {
        Ok(()) => Ok(true),
        Err(genarm_plot::PlotError::Empty { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Draws the plots for the grid's shape: one `score_vs_weight_<OBJECTIVE>.png` per objective
/// for a one-ARM grid (ARM vs control, 95% CI bars), `pareto.png` for a two-ARM grid; none
/// without data. Returns the files written.
pub fn plots(report: &Report, out: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let mut written = Vec::new();
    let unguided = report.rows.iter().find(|r| r.combo.kind == ComboKind::Unguided);
    match report.run.grid.as_slice() {
        [axis] => {
            for o in &report.objectives {
                let mut series = Vec::new();
                for (kind, name) in [
                    (ComboKind::Arm, format!("ARM {}", axis.name)),
                    (
                        ComboKind::Control,
                        format!("control {}", report.run.control.clone().unwrap_or_default()),
                    ),
                ] {
                    let mut pts: Vec<(f64, Estimate)> = report
                        .rows
                        .iter()
                        .filter(|r| r.combo.kind == kind)
                        .filter_map(|r| {
                            Some((r.combo.weights[&axis.name], objective_stats(r, &o.name)?.mean))
                        })
                        .collect();
                    if pts.is_empty() {
                        continue;
                    }
                    if let Some(u) = unguided.and_then(|u| objective_stats(u, &o.name)) {
                        pts.push((0.0, u.mean));
                    }
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    series.push(genarm_plot::Series {
                        name,
                        points: pts.iter().map(|(w, e)| (*w, e.value)).collect(),
                        error_bars: Some(pts.iter().map(|(_, e)| bar(e)).collect()),
                    });
                }
                let chart = genarm_plot::LineChart {
                    title: format!("{}: score vs weight of {} (95% CI)", o.name, axis.name),
                    x_label: format!("weight of {}", axis.name),
                    y_label: format!("mean {} score", o.name),
                    series,
                };
                let path = out.join(format!("score_vs_weight_{}.png", o.name));
                if drawn(chart.render_png(&path, 900, 600))? {
                    written.push(path);
                }
            }
        }
        [a, b] => {
            let names: Vec<&str> = report.objectives.iter().map(|o| o.name.as_str()).collect();
            let (ox, oy) = if names.contains(&a.name.as_str()) && names.contains(&b.name.as_str()) {
                (a.name.clone(), b.name.clone())
            } else if names.len() >= 2 {
                (names[0].to_string(), names[1].to_string())
            } else {
                return Ok(written);
            };
            let points = report
                .rows
                .iter()
                .filter_map(|r| {
                    let x = objective_stats(r, &ox)?.mean.value;
                    let y = objective_stats(r, &oy)?.mean.value;
                    let label = format!("{}, {}", r.combo.weights[&a.name], r.combo.weights[&b.name]);
                    Some(genarm_plot::LabeledPoint { x, y, label })
                })
                .collect();
            let chart = genarm_plot::ScatterChart {
                title: format!("mean {ox} vs {oy}; labels: ({}, {}) weights", a.name, b.name),
                x_label: format!("mean {ox} score"),
                y_label: format!("mean {oy} score"),
                points,
            };
            let path = out.join("pareto.png");
            if drawn(chart.render_png(&path, 900, 650))? {
                written.push(path);
            }
        }
        _ => {}
    }
    Ok(written)
}

/// Writes `eval.json`, `eval.md` and the plots into `out` (created if missing). Returns the
/// files written.
pub fn write(report: &Report, out: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let io = |what: String| move |source| EvalError::Io { what, source };
    std::fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let json_path = out.join("eval.json");
    let json =
        serde_json::to_string_pretty(report).map_err(|e| EvalError::Usage(format!("serializing: {e}")))?;
    std::fs::write(&json_path, json).map_err(io(format!("writing {}", json_path.display())))?;
    let md_path = out.join("eval.md");
    std::fs::write(&md_path, markdown(report)).map_err(io(format!("writing {}", md_path.display())))?;
    let mut files = vec![json_path, md_path];
    files.extend(plots(report, out)?);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::expand;

    fn sample(combo: usize, prompt: usize, scores: &[(&str, f64)], ok: bool) -> Sample {
        Sample {
            combo,
            prompt,
            sample: 0,
            seed: 1,
            text: ok.then(|| "x".into()),
            finish_reason: None,
            completion_tokens: ok.then_some(4),
            words: ok.then_some(2),
            scores: scores.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            base_logprob_per_token: None,
            attempts: if ok { 1 } else { 2 },
            error: (!ok).then(|| "HTTP 503".into()),
        }
    }

    #[test]
    fn rows_pair_each_output_with_the_unguided_one_of_its_prompt() {
        let combos = expand(&["a=1".parse().unwrap()], None).unwrap();
        let objectives = vec![Objective { name: "o".into(), describe: "d".into() }];
        let samples = vec![
            sample(0, 0, &[("o", 1.0)], true),
            sample(0, 1, &[("o", 5.0)], true),
            sample(0, 2, &[("o", 0.0)], true),
            sample(1, 0, &[("o", 2.0)], true), // win
            sample(1, 1, &[("o", 5.0)], true), // tie
            sample(1, 2, &[], false),          // failed: no pair
        ];
        let rows = aggregate(&combos, &objectives, &samples);
        assert_eq!((rows[1].n_ok, rows[1].n_failed), (2, 1));
        let w = rows[1].objectives[0].win_rate_vs_unguided;
        assert_eq!((w.n, w.value), (2, 0.75));
        assert_eq!(rows[1].objectives[0].mean.value, 3.5);
        assert_eq!(rows[0].objectives[0].mean.value, 2.0);
        assert_eq!(rows[0].mean_tokens, Some(4.0));
        let report = Report {
            provenance: Provenance {
                command: vec!["genarm".into(), "eval".into(), "--grid".into(), "a=1".into()],
                git: genarm_demo::provenance::GitState {
                    dir: "/src".into(),
                    commit: Some("0123abcd".into()),
                    dirty: Some(true),
                    note: None,
                },
                files: vec![],
            },
            run: RunInfo {
                url: "http://x".into(),
                model: "m".into(),
                grid: vec!["a=1".parse().unwrap()],
                control: None,
                samples: 1,
                seed: 1,
                max_tokens: 8,
                temperature: 1.0,
                top_p: None,
                base_model: None,
                generation_seconds: 0.5,
            },
            objectives,
            prompts: vec!["p".into(); 3],
            rows,
            failures: 1,
            outputs: samples,
        };
        let md = markdown(&report);
        assert!(md.contains("| a=1 | ARM | 2 (1 failed) | 3.500 [") && md.contains("| 0.750 ["), "{md}");
        assert!(md.contains("1 requests failed") && md.contains("HTTP 503"), "{md}");
        assert!(
            md.contains("genarm eval --grid a=1") && md.contains("commit `0123abcd` (tree dirty)"),
            "{md}"
        );
    }

    #[test]
    fn shell_join_quotes_what_needs_it() {
        let args = ["genarm", "eval", "--prompts", "my prompts.jsonl", "--grid", "a=0,1"].map(String::from);
        assert_eq!(shell_join(&args), "genarm eval --prompts 'my prompts.jsonl' --grid a=0,1");
    }
}
