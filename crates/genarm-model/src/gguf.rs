//! Opening a GGUF file (llama.cpp's format): its config from the metadata, its tensors under HF
//! names and in HF layout (dequantized to f32 on load, llama.cpp's Q/K row permutation undone),
//! and its tokenizer and chat template (see [`crate::gguf_tokenizer`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::{DType, Device, Tensor};

use crate::assets::{model_id_of, ModelAssets};
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf_tokenizer::int_of;
use crate::weights::TensorSource;

/// Opens a GGUF file: reads its header once, derives the [`LlamaConfig`] and the tokenizer from
/// the metadata, and checks that every tensor's data lies inside the file (so a truncated
/// download is reported here, naming the file, rather than at load time).
///
/// Supported architectures (`general.architecture`): `llama`, `mistral`, `qwen2`.
pub fn open(path: &Path) -> Result<ModelAssets> {
    let content = read_header(path)?;
    check_extents(&content, path)?;
    let config = config_from_gguf(&content, path)?;
    let tokenizer = crate::gguf_tokenizer::from_metadata(&content.metadata, path)?;
    let tensors = GgufSource::new(path, content, &config)?;
    Ok(ModelAssets {
        model_id: model_id_of(path),
        path: path.to_owned(),
        config,
        tensors: Arc::new(tensors),
        tokenizer,
    })
}

/// Reads a GGUF file's header: its metadata and tensor directory (not the tensor data).
pub fn read_header(path: &Path) -> Result<Content> {
    let file = File::open(path).map_err(|e| bad_file(path, format!("cannot open: {e}")))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    Content::read(&mut reader)
        .map_err(|e| bad_file(path, format!("not a valid GGUF file (corrupt or truncated header): {e}")))
}

fn bad_file(path: &Path, reason: String) -> ModelError {
    ModelError::BadFile { path: path.to_owned(), reason }
}

/// Bytes of tensor data `info` describes.
fn data_len(info: &TensorInfo) -> Option<u64> {
    let elems = info.shape.elem_count();
    let block = info.ggml_dtype.block_size();
    if elems % block != 0 {
        return None;
    }
    Some((elems / block * info.ggml_dtype.type_size()) as u64)
}

/// Checks that every tensor's data lies inside the file.
fn check_extents(content: &Content, path: &Path) -> Result<()> {
    let file_len = std::fs::metadata(path).map_err(|e| bad_file(path, e.to_string()))?.len();
    for (name, info) in &content.tensor_infos {
        let len = data_len(info).ok_or_else(|| {
            bad_file(
                path,
                format!(
                    "tensor {name} has {} elements, not a multiple of the {:?} block size {}",
                    info.shape.elem_count(),
                    info.ggml_dtype,
                    info.ggml_dtype.block_size()
                ),
            )
        })?;
        let end = content.tensor_data_offset.checked_add(info.offset).and_then(|s| s.checked_add(len));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(bad_file(
                    path,
                    format!(
                        "truncated: tensor {name} needs bytes up to {} but the file has {file_len} bytes; \
                         download it again",
                        end.map_or_else(|| "beyond 2^64".to_owned(), |e| e.to_string())
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// GGUF's name for the HF tensor `name` (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`), or `None` for names with no GGUF counterpart.
pub fn gguf_name(name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let short = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

/// Reads the config of a Llama-family model from GGUF metadata (llama.cpp's key names).
pub fn config_from_gguf(content: &Content, path: &Path) -> Result<LlamaConfig> {
    let md = &content.metadata;
    let bad = |reason: String| ModelError::BadConfig { path: path.to_owned(), reason };
    let arch = match md.get("general.architecture") {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(bad(format!("general.architecture is not a string: {v:?}"))),
        None => return Err(bad("no general.architecture in the metadata".into())),
    };
    if !matches!(arch, "llama" | "mistral" | "qwen2") {
        return Err(ModelError::UnsupportedModelType { model_type: arch.to_owned(), path: path.to_owned() });
    }
    let int = |key: &str| -> Result<Option<usize>> {
        let key = format!("{arch}.{key}");
        match md.get(&key) {
            None => Ok(None),
            Some(Value::Array(_)) => Err(bad(format!("{key} varies per layer, which is not supported"))),
            Some(v) => int_of(v)
                .and_then(|i| usize::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{key} is not a non-negative integer: {v:?}"))),
        }
    };
    let need = |key: &str| int(key)?.ok_or_else(|| bad(format!("no {arch}.{key} in the metadata")));
    let float = |key: &str| -> Result<Option<f64>> {
        let key = format!("{arch}.{key}");
        match md.get(&key) {
            None => Ok(None),
            // GGUF stores f32; go through its shortest decimal so 1e-5 stays 1e-5 in f64.
            Some(Value::F32(x)) => Ok(Some(x.to_string().parse().unwrap_or(*x as f64))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(bad(format!("{key} is not a float: {v:?}"))),
        }
    };

    if let Some(n) = int("expert_count")? {
        if n > 0 {
            return Err(bad(format!(
                "{arch}.expert_count = {n}: mixture-of-experts models are not supported"
            )));
        }
    }
    match md.get(&format!("{arch}.rope.scaling.type")) {
        None => {}
        Some(Value::String(t)) if t == "none" => {}
        Some(v) => {
            return Err(bad(format!(
                "{arch}.rope.scaling.type = {v:?}: RoPE scaling in GGUF files is not supported"
            )))
        }
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(bad(
            "the file holds rope_freqs.weight (Llama 3.1-style RoPE scaling baked in by llama.cpp), which is not \
             supported for GGUF files yet; serve this model from its HF directory"
                .into(),
        ));
    }

    let hidden_size = need("embedding_length")?;
    let num_attention_heads = need("attention.head_count")?;
    if num_attention_heads == 0 {
        return Err(bad(format!("{arch}.attention.head_count is 0")));
    }
    let num_key_value_heads = int("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = match int("attention.key_length")? {
        Some(d) => d,
        None => {
            if hidden_size % num_attention_heads != 0 {
                return Err(bad(format!(
                    "embedding_length {hidden_size} is not a multiple of head_count {num_attention_heads}"
                )));
            }
            hidden_size / num_attention_heads
        }
    };
    if let Some(v) = int("attention.value_length")? {
        if v != head_dim {
            return Err(bad(format!(
                "value_length {v} differs from key_length {head_dim}, which is not supported"
            )));
        }
    }
    if let Some(r) = int("rope.dimension_count")? {
        if r != head_dim {
            return Err(bad(format!(
                "rope.dimension_count {r} differs from the head dimension {head_dim} (partial RoPE is not supported)"
            )));
        }
    }
    let rms_norm_eps = float("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| bad(format!("no {arch}.attention.layer_norm_rms_epsilon in the metadata")))?;

    let shape_of = |n: &str| content.tensor_infos.get(n).map(|i| i.shape.dims().to_vec());
    let embd = shape_of("token_embd.weight").ok_or_else(|| ModelError::MissingTensor {
        name: "model.embed_tokens.weight (token_embd.weight)".into(),
        path: path.to_owned(),
    })?;
    let vocab_size = match embd.as_slice() {
        [rows, _] => *rows,
        _ => return Err(bad(format!("token_embd.weight has shape {embd:?}, expected [vocab, hidden]"))),
    };
    let has = |n: &str| content.tensor_infos.contains_key(n);

    let token_id = |key: &str| md.get(key).and_then(int_of).and_then(|i| u32::try_from(i).ok());
    let mut eos_token_ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = token_id(key) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    let cfg = LlamaConfig {
        model_type: arch.to_owned(),
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0) as f32,
        rope_scaling: None,
        max_position_embeddings: int("context_length")?.unwrap_or(4096),
        tie_word_embeddings: !has("output.weight"),
        qkv_bias: arch == "qwen2" || has("blk.0.attn_q.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_gate.bias") || has("blk.0.ffn_down.bias"),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids,
    };
    cfg.validate().map_err(bad)?;
    Ok(cfg)
}

/// The tensors of a GGUF file, served under HF names and in HF layout.
///
/// Tensors are read from the file on demand (the header is parsed once, at open), dequantized to
/// f32 on the CPU, un-permuted where needed, then cast to the requested dtype and moved to the
/// requested device.
pub struct GgufSource {
    path: PathBuf,
    file: Mutex<File>,
    infos: HashMap<String, TensorInfo>,
    data_offset: u64,
    /// `(query heads, key/value heads)` when q/k rows carry llama.cpp's RoPE permutation.
    permuted_heads: Option<(usize, usize)>,
}

impl GgufSource {
    /// Wraps an opened GGUF file whose header is `content`.
    ///
    /// For the `llama` and `mistral` architectures llama.cpp's converter interleaves the rows
    /// of each q/k head (`w.reshape(n_head, 2, d/2, ..).swapaxes(1, 2)`) for its pairwise RoPE;
    /// loading reverses that, so the engine's HF-style half-split RoPE applies. Qwen2 files
    /// are stored in HF order.
    pub fn new(path: &Path, content: Content, config: &LlamaConfig) -> Result<Self> {
        let file = File::open(path).map_err(|e| bad_file(path, format!("cannot open: {e}")))?;
        let permuted = matches!(config.model_type.as_str(), "llama" | "mistral");
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
            infos: content.tensor_infos,
            data_offset: content.tensor_data_offset,
            permuted_heads: permuted.then_some((config.num_attention_heads, config.num_key_value_heads)),
        })
    }

    /// The number of heads whose rows must be un-permuted in tensor `name`, if any.
    fn permuted_heads_of(&self, name: &str) -> Option<usize> {
        let (q, kv) = self.permuted_heads?;
        if name.ends_with(".self_attn.q_proj.weight") || name.ends_with(".self_attn.q_proj.bias") {
            Some(q)
        } else if name.ends_with(".self_attn.k_proj.weight") || name.ends_with(".self_attn.k_proj.bias") {
            Some(kv)
        } else {
            None
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor { name: name.to_owned(), path: self.path.clone() }
    }
}

/// Reverses llama.cpp's q/k permutation: rows seen as `[n_head, d/2, 2]` become `[n_head, 2, d/2]`.
pub fn unpermute_qk(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if n_head == 0 || rows % (2 * n_head) != 0 {
        candle_core::bail!("{rows} rows do not split into {n_head} heads of an even size");
    }
    let mut split = vec![n_head, rows / n_head / 2, 2];
    split.extend_from_slice(&dims[1..]);
    t.reshape(split)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

impl TensorSource for GgufSource {
    fn location(&self) -> &Path {
        &self.path
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        // candle reverses GGUF's (ggml, innermost-first) dimensions, giving HF's [out, in].
        let info = self.infos.get(&gguf_name(name)?)?;
        Some(info.shape.dims().to_vec())
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let gname = gguf_name(name).ok_or_else(|| self.missing(name))?;
        let info = self.infos.get(&gname).ok_or_else(|| self.missing(name))?;
        let qtensor = {
            // A poisoned lock only means another load panicked mid-read; every read seeks first.
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            info.read(&mut *file, self.data_offset, &Device::Cpu)
        }
        .map_err(|e| bad_file(&self.path, format!("reading tensor {gname} ({name}): {e}")))?;
        let mut t = qtensor.dequantize(&Device::Cpu)?;
        if let Some(n_head) = self.permuted_heads_of(name) {
            t = unpermute_qk(&t, n_head).map_err(|e| ModelError::BadConfig {
                path: self.path.clone(),
                reason: format!("tensor {gname} ({name}) of shape {:?}: {e}", t.dims()),
            })?;
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
            ("model.layers.12.self_attn.k_proj.bias", "blk.12.attn_k.bias"),
            ("model.layers.1.self_attn.v_proj.weight", "blk.1.attn_v.weight"),
            ("model.layers.1.self_attn.o_proj.weight", "blk.1.attn_output.weight"),
            ("model.layers.2.mlp.gate_proj.weight", "blk.2.ffn_gate.weight"),
            ("model.layers.2.mlp.up_proj.weight", "blk.2.ffn_up.weight"),
            ("model.layers.2.mlp.down_proj.weight", "blk.2.ffn_down.weight"),
            ("model.layers.3.input_layernorm.weight", "blk.3.attn_norm.weight"),
            ("model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_name("model.layers.0.mlp.up_proj.scales"), None);
    }

    /// llama.cpp's forward permutation, written as in convert_hf_to_gguf.py.
    fn permute(w: &Tensor, n_head: usize) -> Tensor {
        let dims = w.dims().to_vec();
        let mut split = vec![n_head, 2, dims[0] / n_head / 2];
        split.extend_from_slice(&dims[1..]);
        w.reshape(split).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape(dims).unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let w = Tensor::arange(0f32, 6.0 * 8.0 * 3.0, &Device::Cpu).unwrap().reshape((24, 6)).unwrap();
        let p = permute(&w, 3);
        assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_eq!(unpermute_qk(&p, 3).unwrap().to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // Row r of head h at half i, pair slot j: GGUF row = h*d + 2*i + j, HF row = h*d + j*d/2 + i.
        let b = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap();
        assert_eq!(permute(&b, 2).to_vec1::<f32>().unwrap(), vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(
            unpermute_qk(&permute(&b, 2), 2).unwrap().to_vec1::<f32>().unwrap(),
            b.to_vec1::<f32>().unwrap()
        );
        assert!(unpermute_qk(&b, 3).is_err());
    }

    #[test]
    fn not_a_gguf_is_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.gguf");
        std::fs::write(&path, b"definitely not a gguf file").unwrap();
        let e = open(&path).err().expect("junk must not open");
        assert!(matches!(e, ModelError::BadFile { .. }), "{e}");
        assert!(e.to_string().contains("junk.gguf"), "{e}");
    }
}
