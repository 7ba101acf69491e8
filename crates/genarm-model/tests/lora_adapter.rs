//! PEFT LoRA adapters: the merged weights equal `W + (alpha/r)·B·A` computed by hand from the
//! files, open/save round-trips, name normalization, and every refusal names its cause.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use genarm_model::lora::{normalize_peft_name, LoraConfig, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use genarm_model::{peft_tensor_name, LoraAdapter, LoraPart, ModelAssets, ModelError};
use genarm_testkit::{fixture_dir, lora};
use safetensors::SafeTensors;

/// Every module an adapter may target.
const TARGETS: &[&str] = &genarm_model::lora::TARGET_MODULES;

/// A tensor of an f32 safetensors file as (shape, values), read without candle.
fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{name} in {}: {e}", path.display()));
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let vals = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (view.shape().to_vec(), vals)
}

fn write_adapter(backbone: &str, dir: &Path, rank: usize, targets: &[&str]) {
    lora::write_random_adapter(&fixture_dir(backbone), dir, rank, targets, 7, 0.5).unwrap();
}

#[test]
fn merged_weight_is_w_plus_scaled_ba_by_hand() {
    for fixture in ["llama-gqa-tied", "qwen2-bias"] {
        let tmp = tempfile::tempdir().unwrap();
        let rank = 4;
        write_adapter(fixture, tmp.path(), rank, TARGETS);
        let assets = ModelAssets::open(tmp.path()).unwrap();
        assert_eq!(assets.model_id, tmp.path().file_name().unwrap().to_string_lossy());
        let scale = lora::lora_alpha(rank) / rank as f64;
        assert_eq!(scale, 2.0);
        let adapter_file = tmp.path().join(ADAPTER_WEIGHTS_FILE);
        let base_file = fixture_dir(fixture).join("model.safetensors");
        let mut worst: f64 = 0.0;
        let mut moved: f64 = 0.0;
        for (layer, module) in [(0, "k_proj"), (1, "down_proj"), (1, "o_proj")] {
            let block = if module == "down_proj" { "mlp" } else { "self_attn" };
            let w_name = format!("model.layers.{layer}.{block}.{module}.weight");
            let (ws, w) = read_f32(&base_file, &w_name);
            let (as_, a) = read_f32(&adapter_file, &lora::peft_name(layer, module, "lora_A"));
            let (bs, b) = read_f32(&adapter_file, &lora::peft_name(layer, module, "lora_B"));
            let (out, inp) = (ws[0], ws[1]);
            assert_eq!(as_, vec![rank, inp]);
            assert_eq!(bs, vec![out, rank]);
            let got = assets.tensors.load(&w_name, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(got.dims(), &[out, inp]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for o in 0..out {
                for i in 0..inp {
                    let ba: f64 = (0..rank).map(|k| b[o * rank + k] as f64 * a[k * inp + i] as f64).sum();
                    let want = w[o * inp + i] as f64 + scale * ba;
                    worst = worst.max((got[o * inp + i] as f64 - want).abs());
                    moved = moved.max((got[o * inp + i] as f64 - w[o * inp + i] as f64).abs());
                }
            }
        }
        // Untargeted tensors pass through untouched.
        let norm = assets.tensors.load("model.norm.weight", DType::F32, &Device::Cpu).unwrap();
        let (_, norm_file) = read_f32(&base_file, "model.norm.weight");
        assert_eq!(norm.to_vec1::<f32>().unwrap(), norm_file);
        println!("{fixture}: max |merged - (W + s·B·A)| = {worst:.2e}, max |merged - W| = {moved:.3}");
        assert!(worst < 1e-5, "{fixture}: {worst}");
        assert!(moved > 0.1, "{fixture}: the adapter barely moves the weights ({moved})");
    }
}

#[test]
fn merge_in_bf16_is_the_f32_merge_rounded() {
    let tmp = tempfile::tempdir().unwrap();
    write_adapter("qwen2-bias", tmp.path(), 2, &["q_proj"]);
    let assets = ModelAssets::open(tmp.path()).unwrap();
    let name = "model.layers.1.self_attn.q_proj.weight";
    let f32w = assets.tensors.load(name, DType::F32, &Device::Cpu).unwrap();
    let bf = assets.tensors.load(name, DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(bf.dtype(), DType::BF16);
    let want = f32w.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    let diff = (bf.to_dtype(DType::F32).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn open_save_round_trip_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_adapter("llama-gqa-tied", &a, 3, &["q_proj", "v_proj", "down_proj"]);
    let first = LoraAdapter::open(&a).unwrap();
    assert_eq!(first.config.r, 3);
    assert_eq!(first.config.lora_alpha, 6.0);
    assert_eq!(first.config.scale(), 2.0);
    assert_eq!(first.tensors.len(), 2 * 3 * 2);
    first.save(&b).unwrap();
    let second = LoraAdapter::open(&b).unwrap();
    assert_eq!(first.config, second.config);
    let mut names: Vec<_> = first.tensors.keys().collect();
    names.sort();
    for name in names {
        // Compare the stored bytes, independently of candle.
        let (s1, v1) = read_f32(&a.join(ADAPTER_WEIGHTS_FILE), name);
        let (s2, v2) = read_f32(&b.join(ADAPTER_WEIGHTS_FILE), name);
        assert_eq!(s1, s2, "{name}");
        assert!(v1.iter().zip(&v2).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed");
    }
    // The written config is PEFT's.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["r"], 3);
}

#[test]
fn names_with_an_adapter_segment_are_normalized() {
    assert_eq!(
        peft_tensor_name(3, "q_proj", LoraPart::A),
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(
        peft_tensor_name(0, "gate_proj", LoraPart::B),
        "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"
    );
    assert_eq!(
        normalize_peft_name("base_model.model.model.layers.2.mlp.up_proj.lora_B.default.weight").as_deref(),
        Some("base_model.model.model.layers.2.mlp.up_proj.lora_B.weight")
    );
    assert_eq!(normalize_peft_name("base_model.model.model.layers.2.mlp.q_proj.lora_B.weight"), None);
    assert_eq!(normalize_peft_name("base_model.model.lm_head.weight"), None);

    // An adapter saved with `.default.` names opens and merges the same.
    let tmp = tempfile::tempdir().unwrap();
    let (plain, named) = (tmp.path().join("plain"), tmp.path().join("named"));
    write_adapter("llama-gqa-tied", &plain, 2, &["v_proj"]);
    std::fs::create_dir_all(&named).unwrap();
    std::fs::copy(plain.join(ADAPTER_CONFIG_FILE), named.join(ADAPTER_CONFIG_FILE)).unwrap();
    let bytes = std::fs::read(plain.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().map(|(n, v)| (n.replace(".weight", ".default.weight"), v)).collect();
    safetensors::tensor::serialize_to_file(renamed, None, &named.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let a = LoraAdapter::open(&plain).unwrap();
    let b = LoraAdapter::open(&named).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        let d = (t - u).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn backbone_given_as_a_hub_id_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    write_adapter("llama-gqa-tied", tmp.path(), 2, &["q_proj"]);
    edit_config(tmp.path(), |v| v["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct".into());
    let e = ModelAssets::open(tmp.path()).err().expect("a hub id is not a local path").to_string();
    assert!(
        e.contains(
            "backbone 'HuggingFaceTB/SmolLM2-135M-Instruct' is not a local path: pass --model BACKBONE --lora ADAPTER"
        ) && e.contains(ADAPTER_CONFIG_FILE),
        "{e}"
    );
    // The explicit form works with the same adapter.
    let assets = ModelAssets::open_with_lora(&fixture_dir("llama-gqa-tied"), tmp.path()).unwrap();
    assert_eq!(assets.model_id, tmp.path().file_name().unwrap().to_string_lossy());

    // A relative backbone path resolves against the adapter directory.
    let tmp2 = tempfile::tempdir().unwrap();
    let adapter = tmp2.path().join("arm");
    write_adapter("llama-gqa-tied", &adapter, 2, &["q_proj"]);
    let link = tmp2.path().join("backbone");
    std::os::unix::fs::symlink(fixture_dir("llama-gqa-tied"), &link).unwrap();
    edit_config(&adapter, |v| v["base_model_name_or_path"] = "../backbone".into());
    let assets = ModelAssets::open(&adapter).unwrap();
    assert_eq!(assets.model_id, "arm");
    assert_eq!(assets.config.num_hidden_layers, 2);
}

#[test]
fn missing_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("arm");
    write_adapter("qwen2-bias", &dir, 2, &["q_proj", "up_proj"]);
    let full = LoraAdapter::open(&dir).unwrap();

    // A whole pair missing on one layer: the adapter does not cover its targets.
    let mut a = full.clone();
    let gone_a = peft_tensor_name(1, "up_proj", LoraPart::A);
    a.tensors.remove(&gone_a);
    a.tensors.remove(&peft_tensor_name(1, "up_proj", LoraPart::B));
    a.save(&dir).unwrap();
    let e = ModelAssets::open(&dir).err().expect("layer 1 up_proj is missing");
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    assert!(e.to_string().contains(&gone_a), "{e}");

    // Half a pair: named at open.
    let mut b = full.clone();
    let gone_b = peft_tensor_name(0, "q_proj", LoraPart::B);
    b.tensors.remove(&gone_b);
    b.save(&dir).unwrap();
    let e = LoraAdapter::open(&dir).unwrap_err();
    assert!(e.to_string().contains(&gone_b), "{e}");

    // A tensor for a layer the backbone lacks.
    let mut c = full.clone();
    let extra = peft_tensor_name(5, "q_proj", LoraPart::A);
    c.tensors.insert(extra.clone(), full.tensors[&peft_tensor_name(0, "q_proj", LoraPart::A)].clone());
    c.tensors.insert(
        peft_tensor_name(5, "q_proj", LoraPart::B),
        full.tensors[&peft_tensor_name(0, "q_proj", LoraPart::B)].clone(),
    );
    c.save(&dir).unwrap();
    let e = ModelAssets::open(&dir).err().expect("layer 5 does not exist").to_string();
    assert!(e.contains(&extra) && e.contains("model.layers.5.self_attn.q_proj.weight"), "{e}");

    // An adapter file without the config's target module.
    let mut d = full.clone();
    d.config.target_modules.push("down_proj".into());
    d.save(&dir).unwrap();
    let e = ModelAssets::open(&dir).err().expect("down_proj is targeted but absent").to_string();
    assert!(e.contains(&peft_tensor_name(0, "down_proj", LoraPart::A)), "{e}");
}

#[test]
fn wrong_shapes_are_named_with_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("arm");
    write_adapter("llama-gqa-tied", &dir, 2, &["k_proj"]);
    let mut a = LoraAdapter::open(&dir).unwrap();
    // k_proj is [64, 128] on llama-gqa-tied (4 kv heads × 16); make B [128, 2].
    let name = peft_tensor_name(1, "k_proj", LoraPart::B);
    a.tensors.insert(name.clone(), Tensor::zeros((128, 2), DType::F32, &Device::Cpu).unwrap());
    a.save(&dir).unwrap();
    let e = ModelAssets::open(&dir).err().expect("B has the wrong shape");
    assert!(matches!(e, ModelError::TensorShape { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&name) && msg.contains("[128, 2]") && msg.contains("[64, 2]"), "{msg}");

    // A rank that disagrees with r.
    let mut b = a.clone();
    let name = peft_tensor_name(0, "k_proj", LoraPart::A);
    b.tensors.insert(name.clone(), Tensor::zeros((3, 128), DType::F32, &Device::Cpu).unwrap());
    b.save(&dir).unwrap();
    let msg = LoraAdapter::open(&dir).unwrap_err().to_string();
    assert!(msg.contains(&name) && msg.contains("[3, 128]"), "{msg}");
}

#[test]
fn unsupported_configs_are_refused_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    write_adapter("llama-gqa-tied", tmp.path(), 2, &["q_proj"]);
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("peft_type", "IA3".into(), "\"peft_type\""),
        ("fan_in_fan_out", true.into(), "\"fan_in_fan_out\""),
        ("bias", "lora_only".into(), "\"bias\""),
        ("layers_to_transform", serde_json::json!([0]), "\"layers_to_transform\""),
        ("rank_pattern", serde_json::json!({"q_proj": 4}), "\"rank_pattern\""),
        ("alpha_pattern", serde_json::json!({"q_proj": 4}), "\"alpha_pattern\""),
        ("target_modules", ".*q_proj".into(), "\"target_modules\""),
        ("target_modules", serde_json::json!(["lm_head"]), "lm_head"),
        ("r", 0.into(), "\"r\""),
    ];
    let original = std::fs::read_to_string(tmp.path().join(ADAPTER_CONFIG_FILE)).unwrap();
    for (key, value, needle) in cases {
        std::fs::write(tmp.path().join(ADAPTER_CONFIG_FILE), &original).unwrap();
        edit_config(tmp.path(), |v| v[key] = value.clone());
        let e = ModelAssets::open(tmp.path()).err().unwrap_or_else(|| panic!("{key}={value} was accepted"));
        let msg = e.to_string();
        assert!(msg.contains(needle) && msg.contains(ADAPTER_CONFIG_FILE), "{key}={value}: {msg}");
    }
    // Empty patterns and unknown keys are fine.
    std::fs::write(tmp.path().join(ADAPTER_CONFIG_FILE), &original).unwrap();
    edit_config(tmp.path(), |v| {
        v["rank_pattern"] = serde_json::json!({});
        v["layers_to_transform"] = serde_json::Value::Null;
        v["some_future_key"] = 3.into();
    });
    ModelAssets::open(tmp.path()).unwrap();

    // rsLoRA scales by alpha / sqrt(r).
    let c = LoraConfig::from_json_str(
        r#"{"peft_type":"LORA","r":16,"lora_alpha":8,"target_modules":["q_proj"],"use_rslora":true}"#,
        Path::new("adapter_config.json"),
    )
    .unwrap();
    assert_eq!(c.scale(), 2.0);
}

#[test]
fn pickle_adapters_are_refused_with_the_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    write_adapter("llama-gqa-tied", tmp.path(), 2, &["q_proj"]);
    std::fs::rename(tmp.path().join(ADAPTER_WEIGHTS_FILE), tmp.path().join("adapter_model.bin")).unwrap();
    let msg = ModelAssets::open(tmp.path()).err().expect("no safetensors").to_string();
    assert!(msg.contains("adapter_model.bin") && msg.contains("safetensors"), "{msg}");
}

#[test]
fn an_adapter_as_the_backbone_of_open_with_lora_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_adapter("llama-gqa-tied", tmp.path(), 2, &["q_proj"]);
    let msg = ModelAssets::open_with_lora(tmp.path(), tmp.path()).err().expect("refused").to_string();
    assert!(msg.contains("--model") && msg.contains("adapter"), "{msg}");
}
