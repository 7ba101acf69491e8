//! The ARM preference loss: L = −log σ(β_r·[log π(y_w|x) − log π(y_l|x)] − γ), with log-probs
//! summed over response tokens.

use candle_core::Tensor;

use crate::error::Result;

/// Per-pair loss `[b]` from the summed response log-probs of the chosen and rejected responses
/// (`[b]` each): `softplus(−z)` with `z = β·(chosen − rejected) − γ`, computed stably as
/// `relu(−z) + log(1 + exp(−|z|))`.
pub fn preference_loss(chosen: &Tensor, rejected: &Tensor, beta: f64, margin: f64) -> Result<Tensor> {
    let z = ((chosen - rejected)? * beta)?.affine(1.0, -margin)?;
    let neg = z.neg()?;
    Ok((neg.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// The same loss for plain numbers (evaluation and tests).
pub fn preference_loss_f64(chosen: f64, rejected: f64, beta: f64, margin: f64) -> f64 {
    let z = beta * (chosen - rejected) - margin;
    (-z).max(0.0) + (-z.abs()).exp().ln_1p()
}
