//! Resuming from a checkpoint gives the same final adapter, bit for bit, and the same per-update
//! log as an uninterrupted run; a run with other settings refuses the checkpoint.

mod common;

use std::path::Path;

use candle_core::Device;

fn tensors(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
}

fn update_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|mut v| {
            // Timing differs between runs.
            for k in ["time_s", "tokens_per_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

#[test]
fn resume_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::write_separable(dir.path(), 24, 3);
    let full = dir.path().join("full");
    let mut cfg = common::quick_config("qwen2-bias", &data, &full);
    cfg.eval_fraction = 0.25;
    cfg.grad_accum = 2;
    cfg.epochs = 2;
    cfg.save_steps = 2;
    cfg.keep_checkpoints = 0;
    cfg.weight_decay = 0.01;
    let a = genarm_train::train(&cfg).unwrap();
    assert_eq!(a.steps, 5, "18 train pairs, 5 micro-batches of 4 per epoch, 2 epochs, 2 per update");
    let ckpts = genarm_train::trainer::checkpoints(&full);
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2, 4]);

    // An interrupted run: only checkpoint-2 exists (and the log up to it).
    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoint-2")).unwrap();
    for f in std::fs::read_dir(&ckpts[0].1).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), resumed.join("checkpoint-2").join(f.file_name())).unwrap();
    }
    let mut rcfg = cfg.clone();
    rcfg.out = resumed.clone();
    rcfg.resume = true;
    let b = genarm_train::train(&rcfg).unwrap();
    assert_eq!(b.resumed_from_step, 2);

    let (ta, tb) = (tensors(&full), tensors(&resumed));
    assert_eq!(ta.len(), tb.len());
    let mut nonzero = false;
    for (name, x) in &ta {
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = tb[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(x, y, "{name} differs after resume");
        nonzero |= name.contains("lora_B") && x.iter().any(|v| *v != 0.0);
    }
    assert!(nonzero, "training did not move lora_B: the comparison would be trivial");
    let (la, lb) = (update_lines(&full), update_lines(&resumed));
    assert_eq!(la[2..], lb[..], "updates 3..5 logged differently after resume");
    assert_eq!(a.final_eval_accuracy, b.final_eval_accuracy);

    // Other settings: the checkpoint is refused, naming what differs.
    let mut other = rcfg.clone();
    other.lr = 1e-3;
    let e = genarm_train::train(&other).unwrap_err().to_string();
    assert!(e.contains("lr") && e.contains("checkpoint"), "{e}");
    // A second run into the same directory without --resume is refused.
    let e = genarm_train::train(&cfg).unwrap_err().to_string();
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
}
