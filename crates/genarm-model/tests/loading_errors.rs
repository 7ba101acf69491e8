//! A corrupt or incomplete model directory gives an error naming the file and tensor, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use genarm_model::{Engine, EngineOptions, ModelAssets, ModelError};

/// A scratch copy of a committed fixture.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(genarm_testkit::fixture_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn load_err(dir: &Path) -> ModelError {
    match ModelAssets::open(dir) {
        Err(e) => e,
        Ok(assets) => Engine::load(&assets, EngineOptions::default()).err().expect("loading must fail"),
    }
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn missing_files_are_named() {
    for (file, needle) in [
        ("config.json", "config.json"),
        ("model.safetensors", "model.safetensors"),
        ("tokenizer.json", "tokenizer.json"),
    ] {
        let (_t, dir) = copy_fixture("llama-mha");
        std::fs::remove_file(dir.join(file)).unwrap();
        let e = load_err(&dir);
        assert!(matches!(e, ModelError::MissingFile { .. }), "{file}: {e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(e.to_string().contains("/nonexistent/model"), "{e}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let (_t, dir) = copy_fixture("llama-mha");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, ModelError::BadFile { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    std::fs::write(&path, b"garbage").unwrap();
    let e = load_err(&dir);
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_fixture("llama-mha");
    rewrite_weights(&dir, |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(&dir);
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    assert!(e.to_string().contains("model.layers.1.mlp.up_proj.weight"), "{e}");
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let (_t, dir) = copy_fixture("llama-mha");
    rewrite_weights(&dir, |t| {
        let w = t["model.layers.0.self_attn.k_proj.weight"].narrow(0, 0, 64).unwrap();
        t.insert("model.layers.0.self_attn.k_proj.weight".into(), w);
    });
    let e = load_err(&dir);
    let msg = e.to_string();
    assert!(matches!(e, ModelError::TensorShape { .. }), "{msg}");
    assert!(
        msg.contains("model.layers.0.self_attn.k_proj.weight")
            && msg.contains("[64, 128]")
            && msg.contains("[128, 128]"),
        "{msg}"
    );
}

#[test]
fn bad_config_is_named() {
    let (_t, dir) = copy_fixture("llama-mha");
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"llama\"", "\"mamba\"")).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, ModelError::UnsupportedModelType { .. }), "{e}");
    assert!(e.to_string().contains("mamba"), "{e}");
    std::fs::write(&cfg_path, "{ not json").unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, ModelError::BadFile { .. }) && e.to_string().contains("config.json"), "{e}");
}

#[test]
fn sharded_weights_load_and_missing_shard_is_named() {
    let (_t, dir) = copy_fixture("llama-mha");
    let path = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in tensors.into_iter().enumerate() {
        let (file, part) = if i % 2 == 0 {
            ("model-00001-of-00002.safetensors", &mut a)
        } else {
            ("model-00002-of-00002.safetensors", &mut b)
        };
        map.insert(name.clone(), file.into());
        part.insert(name, t);
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let sharded = Engine::load(&ModelAssets::open(&dir).unwrap(), EngineOptions::default()).unwrap();
    let single = Engine::load(
        &ModelAssets::open(&genarm_testkit::fixture_dir("llama-mha")).unwrap(),
        EngineOptions::default(),
    )
    .unwrap();
    let ids = [1u32, 2, 3, 4, 5];
    let d = (sharded.forward_full(&ids).unwrap() - single.forward_full(&ids).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0, "sharded and single-file loading must give identical logits");

    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, ModelError::MissingFile { .. }) && e.to_string().contains("model-00002-of-00002"),
        "{e}"
    );
}
