//! The preference loss's gradient (backprop through the hand-written training forward) matches
//! central finite differences, in f64, for LoRA matrices and, with full fine-tuning, for norms,
//! embeddings and biases.

mod common;

use candle_core::{DType, Device, Tensor};
use genarm_train::data::PairExample;
use genarm_train::loss::preference_loss;
use genarm_train::trainer::pair_logprobs;
use genarm_train::{TrainModel, Trainable};

const BETA: f64 = 0.5;
const MARGIN: f64 = 0.1;

fn loss(model: &TrainModel, pairs: &[PairExample], grad: bool) -> Tensor {
    let refs: Vec<&PairExample> = pairs.iter().collect();
    let (c, r, _) = pair_logprobs(model, &refs, grad).unwrap();
    preference_loss(&c, &r, BETA, MARGIN).unwrap().mean_all().unwrap()
}

/// Compares d loss / d param[idx] from backprop with a central difference, for the named params.
fn check(model: &TrainModel, pairs: &[PairExample], picks: &[(&str, usize)]) -> usize {
    let l = loss(model, pairs, true);
    let grads = l.backward().unwrap();
    let mut checked = 0;
    for (needle, idx) in picks {
        let p = model
            .params()
            .iter()
            .find(|p| p.name.contains(needle))
            .unwrap_or_else(|| panic!("no parameter matching {needle}"));
        let g = grads
            .get(p.var.as_tensor())
            .expect("gradient present")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let orig = p.var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let idx = idx % orig.len();
        let h = 1e-5;
        let eval_at = |x: f64| {
            let mut v = orig.clone();
            v[idx] = x;
            p.var.set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap()).unwrap();
            loss(model, pairs, false).to_scalar::<f64>().unwrap()
        };
        let fd = (eval_at(orig[idx] + h) - eval_at(orig[idx] - h)) / (2.0 * h);
        p.var.set(&Tensor::from_vec(orig.clone(), p.var.dims(), &Device::Cpu).unwrap()).unwrap();
        let err = (g[idx] - fd).abs();
        let tol = 1e-7 + 1e-5 * fd.abs();
        println!("{}[{idx}]: backprop {:.10e} finite-diff {:.10e} |Δ| {err:.2e}", p.name, g[idx], fd);
        assert!(
            fd.abs() > 1e-9,
            "{}[{idx}]: the loss does not depend on it, the check would prove nothing",
            p.name
        );
        assert!(err <= tol, "{}[{idx}]: backprop {} vs finite differences {fd}", p.name, g[idx]);
        checked += 1;
    }
    checked
}

#[test]
fn lora_gradients_match_finite_differences() {
    for name in common::FIXTURES {
        let assets = common::assets(name);
        let model = common::model(&assets, common::lora(4, 8.0), DType::F64);
        common::randomize_b(&model, 0.05, 11);
        let pairs = common::random_pairs(3, assets.config.vocab_size as u32, 5);
        let n = check(
            &model,
            &pairs,
            &[
                ("layers.0.self_attn.q_proj.lora_A", 17),
                ("layers.0.self_attn.k_proj.lora_B", 5),
                ("layers.1.self_attn.v_proj.lora_A", 300),
                ("layers.0.self_attn.o_proj.lora_B", 41),
                ("layers.1.mlp.gate_proj.lora_B", 77),
                ("layers.1.mlp.up_proj.lora_A", 123),
                ("layers.0.mlp.down_proj.lora_A", 901),
            ],
        );
        assert_eq!(n, 7, "{name}");
    }
}

#[test]
fn full_finetune_gradients_match_finite_differences() {
    for name in common::FIXTURES {
        let assets = common::assets(name);
        let model = common::model(&assets, Trainable::Full, DType::F64);
        let pairs = common::random_pairs(2, assets.config.vocab_size as u32, 9);
        // An embedding row used by the first prompt (tied models use it in the LM head too).
        let tok = pairs[0].prompt[0] as usize * assets.config.hidden_size + 3;
        let mut picks = vec![
            ("model.embed_tokens.weight", tok),
            ("layers.0.input_layernorm.weight", 7),
            ("layers.1.post_attention_layernorm.weight", 100),
            ("model.norm.weight", 50),
            ("layers.1.self_attn.k_proj.weight", 999),
        ];
        if assets.config.qkv_bias {
            picks.push(("layers.0.self_attn.q_proj.bias", 21));
        }
        check(&model, &pairs, &picks);
    }
}
