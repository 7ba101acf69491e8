//! The `guidance` extension: reward weights and β resolved into per-ARM α = weight / β.

use super::ValidationConfig;
use crate::api::error::ApiError;
use crate::api::openai::Guidance;
use crate::workers::{Catalog, ModelIndex};

/// Resolves `guidance` (or the default) into `(model index, α)` pairs with α ≠ 0, sorted by
/// model index (= reward name order).
pub fn resolve_guidance(
    guidance: Option<&Guidance>,
    catalog: &Catalog,
    cfg: &ValidationConfig,
) -> Result<Vec<(ModelIndex, f32)>, ApiError> {
    let Some(g) = guidance else {
        return Ok(cfg.default_guidance.clone());
    };
    let beta = g.beta.unwrap_or(1.0);
    if !(beta.is_finite() && beta > 0.0) {
        return Err(ApiError::invalid(
            "guidance.beta",
            format!("`guidance.beta` must be a finite number > 0 (α = weight / beta), got {beta}"),
        ));
    }
    let mut out = Vec::new();
    for (name, &w) in &g.rewards {
        let Some(index) = catalog.reward_index(name) else {
            let known = catalog.reward_names();
            return Err(ApiError::invalid(
                "guidance.rewards",
                if known.is_empty() {
                    format!(
                        "unknown reward model `{name}`: this server has no reward models; omit \"guidance\""
                    )
                } else {
                    format!("unknown reward model `{name}`; known reward models: {}", known.join(", "))
                },
            ));
        };
        let alpha = (w / beta) as f32;
        if !w.is_finite() || !alpha.is_finite() {
            return Err(ApiError::invalid(
                "guidance.rewards",
                format!("the weight of `{name}` must be a finite number (and weight / beta must fit an f32), got {w}"),
            ));
        }
        if alpha != 0.0 {
            out.push((index, alpha));
        }
    }
    out.sort_by_key(|&(i, _)| i);
    Ok(out)
}
