//! Deterministic random LoRA adapters in the PEFT format (`adapter_config.json` +
//! `adapter_model.safetensors`) for tests: the tensor names follow genarm-model's target list and
//! module blocks, the files are written independently of genarm-model's reader.

use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use crate::rng;

/// The shapes a LoRA adapter must fit: a backbone's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraDims {
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP.
    pub intermediate: usize,
    /// Output width of q_proj (heads × head_dim).
    pub q_out: usize,
    /// Output width of k_proj and v_proj (kv heads × head_dim).
    pub kv_out: usize,
}

impl LoraDims {
    /// Reads the dimensions from a HF `config.json`.
    pub fn from_config_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .with_context(|| format!("{k} in {}", path.display()))
        };
        let hidden = get("hidden_size")?;
        let heads = get("num_attention_heads")?;
        let kv_heads = get("num_key_value_heads").unwrap_or(heads);
        let head_dim = get("head_dim").unwrap_or(hidden / heads);
        Ok(Self {
            num_layers: get("num_hidden_layers")?,
            hidden,
            intermediate: get("intermediate_size")?,
            q_out: heads * head_dim,
            kv_out: kv_heads * head_dim,
        })
    }

    /// `[out, in]` of a target module's weight, or `None` for an unknown module.
    pub fn weight_shape(&self, module: &str) -> Option<(usize, usize)> {
        Some(match module {
            "q_proj" => (self.q_out, self.hidden),
            "k_proj" | "v_proj" => (self.kv_out, self.hidden),
            "o_proj" => (self.hidden, self.q_out),
            "gate_proj" | "up_proj" => (self.intermediate, self.hidden),
            "down_proj" => (self.hidden, self.intermediate),
            _ => return None,
        })
    }
}

/// The PEFT tensor name of a LoRA matrix (`part` is `"lora_A"` or `"lora_B"`).
pub fn peft_name(layer: usize, module: &str, part: &str) -> String {
    let block = genarm_model::lora::module_block(module).unwrap_or("mlp");
    format!("base_model.model.model.layers.{layer}.{block}.{module}.{part}.weight")
}

/// `lora_alpha` of the adapters written here: twice the rank, so the merge scale is 2 (a
/// reader that ignores the scale gets visibly different weights).
pub fn lora_alpha(rank: usize) -> f64 {
    2.0 * rank as f64
}

/// Writes a random adapter for the backbone directory `backbone_dir` (its `config.json` gives
/// the shapes) into `out_dir`, with `base_model_name_or_path` = `backbone_dir` as given.
/// See [`write_random_adapter_with`].
pub fn write_random_adapter(
    backbone_dir: &Path,
    out_dir: &Path,
    rank: usize,
    targets: &[&str],
    seed: u64,
    scale: f64,
) -> Result<()> {
    let dims = LoraDims::from_config_json(&backbone_dir.join("config.json"))?;
    let base = backbone_dir.to_str().context("backbone path is not UTF-8")?;
    write_random_adapter_with(&dims, Some(base), out_dir, rank, targets, seed, scale)
}

/// Writes a random PEFT adapter into `out_dir`: A `[rank, in]` ~ N(0, 1/in) and B `[out, rank]`
/// ~ N(0, (scale / 2)² / rank), `lora_alpha` = 2·rank. With unit-scale inputs, the update
/// `2 · B A x` has entries of standard deviation about `scale`, the size of `W x`'s, so `scale`
/// near 0.5 moves the logits clearly. Deterministic in `seed`.
pub fn write_random_adapter_with(
    dims: &LoraDims,
    base_model_name_or_path: Option<&str>,
    out_dir: &Path,
    rank: usize,
    targets: &[&str],
    seed: u64,
    scale: f64,
) -> Result<()> {
    if rank == 0 || targets.is_empty() {
        bail!("a LoRA adapter needs rank > 0 and at least one target module");
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let b_std = scale / 2.0 / (rank as f64).sqrt();
    for layer in 0..dims.num_layers {
        for &module in targets {
            let (out, inp) = dims.weight_shape(module).with_context(|| format!("unknown module {module}"))?;
            for (part, shape, std) in
                [("lora_A", [rank, inp], 1.0 / (inp as f64).sqrt()), ("lora_B", [out, rank], b_std)]
            {
                let name = peft_name(layer, module, part);
                let mut stream = rng::for_tensor(seed, &name);
                let n = shape[0] * shape[1];
                let mut bytes = Vec::with_capacity(4 * n);
                for _ in 0..n {
                    bytes.extend_from_slice(&((std * rng::normal(&mut stream)) as f32).to_le_bytes());
                }
                tensors.push((name, shape.to_vec(), bytes));
            }
        }
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let config = json!({
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "lora_alpha": lora_alpha(rank),
        "lora_dropout": 0.0,
        "peft_type": "LORA",
        "r": rank,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_rslora": false,
        "revision": null,
        "modules_to_save": null,
    });
    let cfg_path = out_dir.join("adapter_config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    let path = out_dir.join("adapter_model.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
