//! The weight grid: `--grid NAME=W1,W2,...` axes, their cross product, the unguided point and
//! the control rows, expanded into the [`Combo`]s the evaluation runs.

use std::collections::BTreeMap;

use crate::EvalError;

/// One `--grid NAME=W1,W2,...`: every weight of one ARM.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Axis {
    /// The reward model's name, as the router knows it.
    pub name: String,
    /// Its weights, in the order given.
    pub weights: Vec<f64>,
}

impl std::str::FromStr for Axis {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Axis, EvalError> {
        let bad = |reason: String| EvalError::Grid { spec: s.to_string(), reason };
        let (name, list) =
            s.split_once('=').ok_or_else(|| bad("expected NAME=W1,W2,... (e.g. upbeat=0,0.5,1,2)".into()))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("the reward name before `=` is empty".into()));
        }
        let mut weights = Vec::new();
        for w in list.split(',') {
            let w = w.trim();
            let v: f64 = w.parse().map_err(|_| bad(format!("`{w}` is not a number")))?;
            if !v.is_finite() {
                return Err(bad(format!("weight `{w}` is not finite")));
            }
            if weights.contains(&v) {
                return Err(bad(format!("weight {v} is listed twice")));
            }
            weights.push(v);
        }
        Ok(Axis { name: name.to_string(), weights })
    }
}

/// What a [`Combo`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComboKind {
    /// Every weight 0: the base alone, no `guidance` field.
    Unguided,
    /// The ARMs of the grid at its weights.
    Arm,
    /// The control reward model at the ARM's weight.
    Control,
}

/// One weight combination that is evaluated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Combo {
    /// Position in the run (rows of the report are in this order).
    pub id: usize,
    /// Short name for tables and logs: `unguided`, `upbeat=0.5`, `upbeat=1 concise=0.5`,
    /// `control base=0.5`.
    pub label: String,
    /// What it is.
    pub kind: ComboKind,
    /// The grid weight of every axis (0 included), by axis name. For a control row: the ARM
    /// weight it is the control of.
    pub weights: BTreeMap<String, f64>,
    /// What is sent as `guidance.rewards` (non-zero weights only); empty for unguided.
    pub rewards: BTreeMap<String, f64>,
}

fn fmt_w(w: f64) -> String {
    format!("{w}")
}

/// Expands the axes into the combinations to run: the unguided point first (always present:
/// win rates are computed against it), then the cross product of the axes in the order given
/// (the last axis varies fastest) without its all-zero point, and for a one-axis grid with a
/// `control` the control row right after each ARM row with a non-zero weight.
pub fn expand(axes: &[Axis], control: Option<&str>) -> Result<Vec<Combo>, EvalError> {
    if axes.is_empty() {
        return Err(EvalError::Usage("give at least one --grid NAME=W1,W2,...".into()));
    }
    for (i, a) in axes.iter().enumerate() {
        if a.weights.is_empty() {
            return Err(EvalError::Usage(format!("--grid {} has no weights", a.name)));
        }
        if axes[..i].iter().any(|b| b.name == a.name) {
            return Err(EvalError::Usage(format!(
                "--grid {} is given twice; list all its weights in one --grid",
                a.name
            )));
        }
    }
    if let Some(c) = control {
        if axes.len() != 1 {
            return Err(EvalError::Usage(
                "--control applies to one-ARM grids (one --grid); drop it or give a single --grid".into(),
            ));
        }
        if c == axes[0].name {
            return Err(EvalError::Usage(format!(
                "--control {c} is the ARM being evaluated; name the reward model that serves the untuned backbone"
            )));
        }
    }
    let unguided_weights: BTreeMap<String, f64> = axes.iter().map(|a| (a.name.clone(), 0.0)).collect();
    let mut combos = vec![Combo {
        id: 0,
        label: "unguided".into(),
        kind: ComboKind::Unguided,
        weights: unguided_weights,
        rewards: BTreeMap::new(),
    }];
    // Odometer over the axes, last axis fastest.
    let mut idx = vec![0usize; axes.len()];
    loop {
        let point: Vec<(String, f64)> =
            axes.iter().zip(&idx).map(|(a, &i)| (a.name.clone(), a.weights[i])).collect();
        if point.iter().any(|(_, w)| *w != 0.0) {
            let rewards: BTreeMap<String, f64> =
                point.iter().filter(|(_, w)| *w != 0.0).map(|(n, w)| (n.clone(), *w)).collect();
            let label = point.iter().map(|(n, w)| format!("{n}={}", fmt_w(*w))).collect::<Vec<_>>().join(" ");
            combos.push(Combo {
                id: combos.len(),
                label,
                kind: ComboKind::Arm,
                weights: point.iter().cloned().collect(),
                rewards,
            });
            if let Some(c) = control {
                let w = point[0].1;
                combos.push(Combo {
                    id: combos.len(),
                    label: format!("control {c}={}", fmt_w(w)),
                    kind: ComboKind::Control,
                    weights: point.iter().cloned().collect(),
                    rewards: BTreeMap::from([(c.to_string(), w)]),
                });
            }
        }
        // Advance.
        let mut k = axes.len();
        loop {
            if k == 0 {
                return Ok(combos);
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < axes[k].weights.len() {
                break;
            }
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(s: &str) -> Axis {
        s.parse().unwrap()
    }

    #[test]
    fn axes_parse_and_bad_ones_are_refused_with_the_reason() {
        assert_eq!(
            axis("upbeat=0, 0.5,1,2"),
            Axis { name: "upbeat".into(), weights: vec![0.0, 0.5, 1.0, 2.0] }
        );
        assert_eq!(axis("a=-1").weights, vec![-1.0]);
        for (spec, why) in [
            ("upbeat", "NAME=W1"),
            ("=1,2", "empty"),
            ("a=1,x", "`x` is not a number"),
            ("a=1,inf", "not finite"),
            ("a=1,1.0", "twice"),
            ("a=", "`` is not a number"),
        ] {
            let e = spec.parse::<Axis>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(spec), "{spec}: {e}");
        }
    }

    #[test]
    fn one_axis_expands_to_unguided_then_each_nonzero_weight_with_its_control() {
        let combos = expand(&[axis("upbeat=0,0.5,1")], Some("base")).unwrap();
        let labels: Vec<&str> = combos.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["unguided", "upbeat=0.5", "control base=0.5", "upbeat=1", "control base=1"]);
        assert!(combos.iter().enumerate().all(|(i, c)| c.id == i));
        assert!(combos[0].rewards.is_empty() && combos[0].kind == ComboKind::Unguided);
        assert_eq!(combos[0].weights, BTreeMap::from([("upbeat".to_string(), 0.0)]));
        assert_eq!(combos[2].kind, ComboKind::Control);
        assert_eq!(combos[2].rewards, BTreeMap::from([("base".to_string(), 0.5)]));
        assert_eq!(combos[2].weights, BTreeMap::from([("upbeat".to_string(), 0.5)]));
        assert_eq!(combos[3].rewards, BTreeMap::from([("upbeat".to_string(), 1.0)]));
        // Without 0 in the grid the unguided row is still there; no control without --control.
        let combos = expand(&[axis("upbeat=1,2")], None).unwrap();
        assert_eq!(
            combos.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
            ["unguided", "upbeat=1", "upbeat=2"]
        );
    }

    #[test]
    fn two_axes_expand_to_the_full_cross_product() {
        let combos = expand(&[axis("a=0,1"), axis("b=0,0.5,2")], None).unwrap();
        let labels: Vec<&str> = combos.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["unguided", "a=0 b=0.5", "a=0 b=2", "a=1 b=0", "a=1 b=0.5", "a=1 b=2"]);
        // 2 × 3 points, the all-zero one being the unguided row.
        assert_eq!(combos.len(), 2 * 3);
        assert_eq!(combos[1].rewards, BTreeMap::from([("b".to_string(), 0.5)]));
        assert_eq!(combos[4].rewards, BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 0.5)]));
        assert_eq!(combos[3].weights, BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 0.0)]));
    }

    #[test]
    fn misuse_is_refused() {
        assert!(expand(&[], None).is_err());
        let e = expand(&[axis("a=1"), axis("b=1")], Some("c")).unwrap_err().to_string();
        assert!(e.contains("one-ARM"), "{e}");
        let e = expand(&[axis("a=1")], Some("a")).unwrap_err().to_string();
        assert!(e.contains("--control a"), "{e}");
        let e = expand(&[axis("a=1"), axis("a=2")], None).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
