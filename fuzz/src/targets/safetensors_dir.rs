//! A corrupt `model.safetensors` through `genarm_model::hf_dir::SafetensorsSource`: opening it and
//! reading/loading tensors `w` and `x` must give errors naming the file, never a panic or an
//! out-of-bounds read of the mapping.

use candle_core::{DType, Device};
use genarm_model::hf_dir::SafetensorsSource;
use genarm_model::weights::TensorSource;

/// Runs one input of the `safetensors_dir` target (panics on a finding).
pub fn safetensors_dir(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("genarm-fuzz-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("model.safetensors"), data).expect("write temp file");
    let Ok(src) = SafetensorsSource::open(&dir) else {
        return;
    };
    for name in ["w", "x"] {
        if src.shape(name).is_some() {
            let _ = src.load(name, DType::F32, &Device::Cpu);
        }
    }
}
