//! LoRA adapters in the PEFT format (`adapter_config.json` + `adapter_model.safetensors`), read
//! and written, and a [`TensorSource`] that serves a backbone's weights with an adapter merged in
//! (`W + scale · B A`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::tensors::Projection;
use crate::weights::TensorSource;

/// File name of the adapter's config.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter's weights.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The modules a LoRA adapter may target, in PEFT's (and HF's) naming: the module names of
/// [`Projection::ALL`], in that order.
pub const TARGET_MODULES: [&str; 7] = {
    let mut names = [""; 7];
    let mut i = 0;
    while i < names.len() {
        names[i] = Projection::ALL[i].module_name();
        i += 1;
    }
    names
};

/// The block a target module lives in: `self_attn` for q/k/v/o, `mlp` for gate/up/down;
/// `None` for a module genarm cannot adapt.
pub fn module_block(module: &str) -> Option<&'static str> {
    Projection::from_module_name(module).map(Projection::block)
}

/// Which of a LoRA pair's two matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraPart {
    /// The down projection `A`, shape `[r, in]`.
    A,
    /// The up projection `B`, shape `[out, r]`.
    B,
}

impl LoraPart {
    fn tag(self) -> &'static str {
        match self {
            LoraPart::A => "lora_A",
            LoraPart::B => "lora_B",
        }
    }
}

/// The PEFT tensor name of one LoRA matrix:
/// `base_model.model.model.layers.{layer}.self_attn.q_proj.lora_A.weight` (`mlp.*` for
/// gate/up/down). `module` should be one of [`TARGET_MODULES`]; others are placed under `mlp`.
pub fn peft_tensor_name(layer: usize, module: &str, which: LoraPart) -> String {
    let block = module_block(module).unwrap_or("mlp");
    format!("base_model.model.model.layers.{layer}.{block}.{module}.{}.weight", which.tag())
}

/// The HF name of the base weight a LoRA pair adapts: `model.layers.{layer}.self_attn.q_proj.weight`.
pub fn hf_weight_name(layer: usize, module: &str) -> String {
    let block = module_block(module).unwrap_or("mlp");
    format!("model.layers.{layer}.{block}.{module}.weight")
}

/// Parses a PEFT tensor name into `(layer, module, part)`. Accepts the plain form
/// (`...q_proj.lora_A.weight`) and the form with an adapter name (`...q_proj.lora_A.default.weight`).
/// `None` for anything else (including modules outside [`TARGET_MODULES`]).
pub fn parse_peft_tensor_name(name: &str) -> Option<(usize, String, LoraPart)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (block, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    if module_block(module) != Some(block) {
        return None;
    }
    let (tag, rest) = rest.split_once('.')?;
    let part = match tag {
        "lora_A" => LoraPart::A,
        "lora_B" => LoraPart::B,
        _ => return None,
    };
    // `weight`, or `<adapter name>.weight`.
    match rest.split_once('.') {
        None if rest == "weight" => {}
        Some((adapter, "weight")) if !adapter.is_empty() && !adapter.contains('.') => {}
        _ => return None,
    }
    Some((layer, module.to_owned(), part))
}

/// The canonical PEFT name of `name` (the adapter-name segment dropped), or `None` if it is not
/// a LoRA matrix of a supported module.
pub fn normalize_peft_name(name: &str) -> Option<String> {
    parse_peft_tensor_name(name).map(|(layer, module, part)| peft_tensor_name(layer, &module, part))
}

/// A LoRA adapter's hyper-parameters: PEFT's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank of every pair.
    pub r: usize,
    /// The scaling numerator.
    pub lora_alpha: f64,
    /// Adapted modules, among [`TARGET_MODULES`].
    pub target_modules: Vec<String>,
    /// The backbone: a hub id or a path (absolute, or relative to the adapter directory).
    pub base_model_name_or_path: Option<String>,
    /// Rank-stabilized scaling `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The factor the product `B A` is multiplied by: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.r as f64;
        if self.use_rslora {
            self.lora_alpha / r.sqrt()
        } else {
            self.lora_alpha / r
        }
    }

    /// The config as PEFT writes it (with `peft_type` `LORA`, `task_type` `CAUSAL_LM`, no
    /// dropout, no bias, `inference_mode` true).
    pub fn to_json(&self) -> Value {
        json!({
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": 0.0,
            "peft_type": "LORA",
            "r": self.r,
            "target_modules": self.target_modules,
            "task_type": "CAUSAL_LM",
            "use_rslora": self.use_rslora,
        })
    }

    /// Parses `adapter_config.json` text; `path` names the file in errors. Unknown keys are
    /// ignored; features genarm does not implement are refused, naming the key.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::BadFile { path: path.to_owned(), reason };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        if let Some(t) = get("peft_type") {
            if t.as_str() != Some("LORA") {
                return Err(bad(format!(
                    "key \"peft_type\" is {t}: genarm loads only LoRA adapters (peft_type \"LORA\")"
                )));
            }
        }
        if get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                "key \"fan_in_fan_out\" is true (GPT-2-style Conv1D weights): genarm serves Llama-family \
                 models, whose adapters have fan_in_fan_out false"
                    .into(),
            ));
        }
        if let Some(b) = get("bias") {
            if b.as_str() != Some("none") {
                return Err(bad(format!(
                    "key \"bias\" is {b}: adapters that train biases are not supported; retrain with bias=\"none\""
                )));
            }
        }
        if get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(bad("key \"use_dora\" is true: DoRA adapters are not supported".into()));
        }
        let non_empty = |v: &Value| match v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::String(s) => !s.is_empty(),
            Value::Null => false,
            _ => true,
        };
        for key in
            ["layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "modules_to_save"]
        {
            if let Some(v) = get(key).filter(|v| non_empty(v)) {
                return Err(bad(format!(
                    "key \"{key}\" is {v}: genarm supports only adapters with the same rank and alpha on \
                     every layer and no fully trained modules; remove it or retrain without it"
                )));
            }
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("key \"r\" (the LoRA rank) is missing or not a positive integer".into()))?
            as usize;
        // PEFT's default lora_alpha is 8.
        let lora_alpha = match get("lora_alpha") {
            None => 8.0,
            Some(a) => a.as_f64().ok_or_else(|| bad(format!("key \"lora_alpha\" is {a}, not a number")))?,
        };
        let target_modules = match get("target_modules") {
            Some(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for m in list {
                    let s = m
                        .as_str()
                        .ok_or_else(|| bad(format!("key \"target_modules\" holds {m}, not a module name")))?;
                    // PEFT matches by suffix: "model.layers.0.self_attn.q_proj" targets q_proj too,
                    // but only on that layer; accept only bare names.
                    if module_block(s).is_none() {
                        return Err(bad(format!(
                            "key \"target_modules\" names {s:?}: genarm adapts only {}",
                            TARGET_MODULES.join(", ")
                        )));
                    }
                    if !out.iter().any(|o: &String| o == s) {
                        out.push(s.to_owned());
                    }
                }
                if out.is_empty() {
                    return Err(bad("key \"target_modules\" is empty".into()));
                }
                out
            }
            Some(Value::String(s)) => {
                return Err(bad(format!(
                    "key \"target_modules\" is the string {s:?} (a regex or \"all-linear\"): genarm needs an \
                     explicit list of module names among {}",
                    TARGET_MODULES.join(", ")
                )))
            }
            Some(other) => return Err(bad(format!("key \"target_modules\" is {other}, not a list"))),
            None => return Err(bad("key \"target_modules\" is missing".into())),
        };
        let base_model_name_or_path = match get("base_model_name_or_path") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(bad(format!("key \"base_model_name_or_path\" is {other}, not a string")))
            }
        };
        let use_rslora = match get("use_rslora") {
            None => false,
            Some(b) => b.as_bool().ok_or_else(|| bad(format!("key \"use_rslora\" is {b}, not a boolean")))?,
        };
        Ok(Self { r, lora_alpha, target_modules, base_model_name_or_path, use_rslora })
    }

    /// Reads `path` (an `adapter_config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.to_owned(),
                    hint: "a PEFT LoRA adapter directory holds adapter_config.json and adapter_model.safetensors"
                        .into(),
                }
            } else {
                ModelError::BadFile { path: path.to_owned(), reason: e.to_string() }
            }
        })?;
        Self::from_json_str(&text, path)
    }
}

/// A LoRA adapter: its config and its matrices under canonical PEFT names
/// ([`peft_tensor_name`]), f32 on the CPU, `A: [r, in]`, `B: [out, r]`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The hyper-parameters.
    pub config: LoraConfig,
    /// The matrices, by canonical PEFT name.
    pub tensors: HashMap<String, Tensor>,
}

/// Whether `dir` is a LoRA adapter directory (it holds `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join(ADAPTER_CONFIG_FILE).is_file()
}

impl LoraAdapter {
    /// Opens a PEFT adapter directory: `adapter_config.json` and `adapter_model.safetensors`.
    /// Tensor names are normalized (an adapter-name segment such as `.default` is dropped), the
    /// tensors converted to f32, and every pair checked for rank `r` and completeness.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = LoraConfig::from_file(&dir.join(ADAPTER_CONFIG_FILE))?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !path.exists() {
            let bin = dir.join("adapter_model.bin");
            let hint = if bin.exists() {
                "the adapter is in PyTorch pickle format (adapter_model.bin), which genarm does not read: \
                 convert it to safetensors (in Python: PeftModel.from_pretrained(...).save_pretrained(dir, \
                 safe_serialization=True))"
            } else {
                "a PEFT LoRA adapter directory holds adapter_config.json and adapter_model.safetensors"
            };
            return Err(ModelError::MissingFile { path, hint: hint.into() });
        }
        let raw = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| ModelError::BadFile {
            path: path.clone(),
            reason: format!("not a valid safetensors file: {e}"),
        })?;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, t) in raw {
            let canon = normalize_peft_name(&name).ok_or_else(|| ModelError::BadFile {
                path: path.clone(),
                reason: format!(
                    "tensor {name} is not a LoRA matrix of a supported module (expected names like \
                     base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight, modules {})",
                    TARGET_MODULES.join(", ")
                ),
            })?;
            let t = t.to_dtype(DType::F32)?;
            if tensors.insert(canon.clone(), t).is_some() {
                return Err(ModelError::BadFile {
                    path: path.clone(),
                    reason: format!("tensor {canon} appears twice (under two adapter names)"),
                });
            }
        }
        let adapter = Self { config, tensors };
        adapter.check_pairs(&path)?;
        Ok(adapter)
    }

    /// Checks every matrix is 2-D with rank `r` on the right side, every module is among the
    /// config's targets, and every A has its B (and back). `path` names the weights in errors.
    pub fn check_pairs(&self, path: &Path) -> Result<()> {
        let r = self.config.r;
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &self.tensors[name];
            let (layer, module, part) = parse_peft_tensor_name(name).ok_or_else(|| ModelError::BadFile {
                path: path.to_owned(),
                reason: format!("tensor {name} is not a LoRA matrix of a supported module"),
            })?;
            if !self.config.target_modules.contains(&module) {
                return Err(ModelError::BadFile {
                    path: path.to_owned(),
                    reason: format!(
                        "tensor {name} adapts {module}, which adapter_config.json's target_modules ({}) omits",
                        self.config.target_modules.join(", ")
                    ),
                });
            }
            let dims = t.dims();
            let ok = dims.len() == 2
                && match part {
                    LoraPart::A => dims[0] == r,
                    LoraPart::B => dims[1] == r,
                };
            if !ok {
                let expected = match part {
                    LoraPart::A => vec![r, dims.get(1).copied().unwrap_or(0)],
                    LoraPart::B => vec![dims.first().copied().unwrap_or(0), r],
                };
                return Err(ModelError::TensorShape {
                    name: name.clone(),
                    path: path.to_owned(),
                    expected,
                    actual: dims.to_vec(),
                });
            }
            let other = match part {
                LoraPart::A => LoraPart::B,
                LoraPart::B => LoraPart::A,
            };
            let partner = peft_tensor_name(layer, &module, other);
            if !self.tensors.contains_key(&partner) {
                return Err(ModelError::MissingTensor { name: partner, path: path.to_owned() });
            }
        }
        Ok(())
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io =
            |p: &Path, e: std::io::Error| ModelError::BadFile { path: p.to_owned(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = serde_json::to_string_pretty(&self.config.to_json()).expect("a JSON value serializes");
        std::fs::write(&cfg_path, text + "\n").map_err(|e| io(&cfg_path, e))?;
        let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, t) in &self.tensors {
            out.insert(name.clone(), t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?);
        }
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let metadata: Option<HashMap<String, String>> = Some([("format".to_owned(), "pt".to_owned())].into());
        safetensors::tensor::serialize_to_file(out.iter().map(|(k, v)| (k.as_str(), v)), metadata, &path)
            .map_err(|e| ModelError::BadFile { path: path.clone(), reason: format!("cannot write: {e}") })?;
        Ok(())
    }

    /// The A and B matrices of `module` on `layer`, if the adapter has them.
    pub fn pair(&self, layer: usize, module: &str) -> Option<(&Tensor, &Tensor)> {
        let a = self.tensors.get(&peft_tensor_name(layer, module, LoraPart::A))?;
        let b = self.tensors.get(&peft_tensor_name(layer, module, LoraPart::B))?;
        Some((a, b))
    }
}

/// A backbone's tensors with a LoRA adapter merged in: targeted weights load as
/// `W + scale · B A` (computed in f32 on the CPU, then converted to the requested dtype and
/// device); every other tensor passes through unchanged.
pub struct LoraMergedSource {
    base: Arc<dyn TensorSource>,
    adapter: Arc<LoraAdapter>,
    adapter_dir: PathBuf,
    /// HF weight name → (A name, B name).
    merged: HashMap<String, (String, String)>,
}

impl LoraMergedSource {
    /// Wraps `base` with `adapter` (opened from `adapter_dir`, used in error messages). Call
    /// [`Self::validate`] before serving.
    pub fn new(base: Arc<dyn TensorSource>, adapter: Arc<LoraAdapter>, adapter_dir: &Path) -> Self {
        let mut merged = HashMap::new();
        for name in adapter.tensors.keys() {
            if let Some((layer, module, LoraPart::A)) = parse_peft_tensor_name(name) {
                merged.insert(
                    hf_weight_name(layer, &module),
                    (name.clone(), peft_tensor_name(layer, &module, LoraPart::B)),
                );
            }
        }
        Self { base, adapter, adapter_dir: adapter_dir.to_owned(), merged }
    }

    /// The adapter merged in.
    pub fn adapter(&self) -> &LoraAdapter {
        &self.adapter
    }

    /// The backbone's tensors.
    pub fn base(&self) -> &Arc<dyn TensorSource> {
        &self.base
    }

    /// Checks that every adapter matrix maps to a base weight of matching shape (A `[r, in]`,
    /// B `[out, r]` against W `[out, in]`), and that the adapter covers every target module of
    /// every one of `config`'s layers.
    pub fn validate(&self, config: &LlamaConfig) -> Result<()> {
        let adapter_path = self.adapter_dir.join(ADAPTER_WEIGHTS_FILE);
        self.adapter.check_pairs(&adapter_path)?;
        let mut names: Vec<&String> = self.adapter.tensors.keys().collect();
        names.sort();
        for name in names {
            let (layer, module, part) = parse_peft_tensor_name(name).expect("checked by check_pairs");
            let weight = hf_weight_name(layer, &module);
            let Some(w) = self.base.shape(&weight) else {
                return Err(ModelError::BadFile {
                    path: adapter_path.clone(),
                    reason: format!(
                        "tensor {name} adapts {weight}, which the backbone {} does not have \
                         (the adapter was trained for another model: {} layers here)",
                        self.base.location().display(),
                        config.num_hidden_layers
                    ),
                });
            };
            self.check_shape(name, part, &w)?;
        }
        for layer in 0..config.num_hidden_layers {
            for module in &self.adapter.config.target_modules {
                for part in [LoraPart::A, LoraPart::B] {
                    let name = peft_tensor_name(layer, module, part);
                    if !self.adapter.tensors.contains_key(&name) {
                        return Err(ModelError::MissingTensor { name, path: adapter_path.clone() });
                    }
                }
            }
        }
        Ok(())
    }

    fn check_shape(&self, name: &str, part: LoraPart, w: &[usize]) -> Result<()> {
        let t = &self.adapter.tensors[name];
        let r = self.adapter.config.r;
        let expected = match (part, w) {
            (LoraPart::A, [_, inp]) => vec![r, *inp],
            (LoraPart::B, [out, _]) => vec![*out, r],
            _ => {
                return Err(ModelError::BadFile {
                    path: self.base.location().to_owned(),
                    reason: format!("the weight adapted by {name} has shape {w:?}, not 2-D"),
                })
            }
        };
        if t.dims() != expected.as_slice() {
            return Err(ModelError::TensorShape {
                name: name.to_owned(),
                path: self.adapter_dir.join(ADAPTER_WEIGHTS_FILE),
                expected,
                actual: t.dims().to_vec(),
            });
        }
        Ok(())
    }
}

impl TensorSource for LoraMergedSource {
    fn location(&self) -> &Path {
        &self.adapter_dir
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.base.shape(name)
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some((a_name, b_name)) = self.merged.get(name) else {
            return self.base.load(name, dtype, device);
        };
        let w = self.base.load(name, DType::F32, &Device::Cpu)?;
        self.check_shape(a_name, LoraPart::A, w.dims())?;
        self.check_shape(b_name, LoraPart::B, w.dims())?;
        let (a, b) = (&self.adapter.tensors[a_name], &self.adapter.tensors[b_name]);
        let delta = (b.matmul(a)? * self.adapter.config.scale())?;
        let merged = (w + delta)?;
        Ok(merged.to_dtype(dtype)?.to_device(device)?)
    }
}
