//! What a run leaves behind: the PEFT adapter of a LoRA run (with `merged/`, the backbone with it
//! merged, on request) or the full HF directory of a fully fine-tuned model.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use genarm_model::lora::{LoraAdapter, LoraConfig};
use genarm_model::weights::TensorSource;
use genarm_model::ModelAssets;

use crate::error::Result;
use crate::model::{TrainModel, Trainable};

use super::TrainConfig;

/// The adapter (PEFT names, f32) of a LoRA model.
pub fn lora_adapter(model: &TrainModel, base_name: Option<String>) -> Result<Option<LoraAdapter>> {
    let Trainable::Lora(spec) = model.trainable() else { return Ok(None) };
    let mut tensors = HashMap::new();
    for p in model.params() {
        let name = format!("base_model.model.{}", p.name);
        debug_assert!(genarm_model::lora::parse_peft_tensor_name(&name).is_some(), "{name}");
        tensors.insert(name, p.var.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    Ok(Some(LoraAdapter {
        config: LoraConfig {
            r: spec.rank,
            lora_alpha: spec.alpha,
            target_modules: spec.targets.iter().map(|t| t.module_name().to_string()).collect(),
            base_model_name_or_path: base_name,
            use_rslora: spec.use_rslora,
        },
        tensors,
    }))
}

/// A model's tensors with some replaced (the weights of a fully fine-tuned model).
pub struct OverlaySource {
    base: Arc<dyn TensorSource>,
    tensors: HashMap<String, Tensor>,
}

impl OverlaySource {
    /// `base` with `tensors` (HF names) replacing its own.
    pub fn new(base: Arc<dyn TensorSource>, tensors: HashMap<String, Tensor>) -> Self {
        Self { base, tensors }
    }
}

impl TensorSource for OverlaySource {
    fn location(&self) -> &Path {
        self.base.location()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.tensors.get(name) {
            Some(t) => Some(t.dims().to_vec()),
            None => self.base.shape(name),
        }
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> genarm_model::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => Ok(t.to_dtype(dtype)?.to_device(device)?),
            None => self.base.load(name, dtype, device),
        }
    }
}

/// Writes the trained model into `cfg.out`: the adapter (and `merged/` with `cfg.merge`) for
/// LoRA, else a full HF directory of `assets` with the trained weights in place of its own.
pub(super) fn write_outputs(
    cfg: &TrainConfig,
    assets: ModelAssets,
    model: &TrainModel,
    base_name: String,
) -> Result<()> {
    let out = &cfg.out;
    match lora_adapter(model, Some(base_name))? {
        Some(adapter) => {
            adapter.save(out)?;
            if cfg.merge {
                let merged = ModelAssets::open(&cfg.model)?.with_lora(adapter, out)?;
                genarm_model::save_hf_dir(&merged, &out.join("merged"))?;
            }
        }
        None => {
            let overlay = OverlaySource::new(assets.tensors.clone(), model.param_values());
            let full = ModelAssets { tensors: Arc::new(overlay), ..assets };
            genarm_model::save_hf_dir(&full, out)?;
        }
    }
    Ok(())
}
