//! The `Catalog`: the models of a cluster (base first, then the reward models by name), checked
//! to belong together once at startup (invariants 6 and 7 of docs/architecture.md §1).

use std::sync::Arc;

use genarm_text::ModelText;

use super::backend::ModelIndex;
use super::error::CatalogError;

/// What the router knows about one model (from its worker's `Info`).
#[derive(Debug)]
pub struct ModelEntry {
    /// Backend index: 0 for the base, then reward models by sorted name.
    pub index: ModelIndex,
    /// The reward name (`None` for the base).
    pub reward_name: Option<String>,
    /// The model id the worker reports.
    pub model_id: String,
    /// The worker's URL.
    pub url: String,
    /// Logits per position.
    pub vocab_size: u32,
    /// Longest context of this model.
    pub max_positions: u32,
    /// Tokenizer, chat template and special ids.
    pub text: Arc<ModelText>,
}

impl ModelEntry {
    /// `base-worker (model M at URL)` or `rm-worker "NAME" (model M at URL)`.
    pub fn display_name(&self) -> String {
        match &self.reward_name {
            None => format!("base-worker (model {} at {})", self.model_id, self.url),
            Some(n) => format!("rm-worker \"{n}\" (model {} at {})", self.model_id, self.url),
        }
    }
}

/// The models of the cluster, fixed after startup.
#[derive(Debug)]
pub struct Catalog {
    /// Every model, by backend index.
    pub models: Vec<ModelEntry>,
    /// V: the base tokenizer's size.
    pub vocab: usize,
    /// Effective context: min of the models' max positions.
    pub max_context: u32,
}

impl Catalog {
    /// The base model.
    pub fn base(&self) -> &ModelEntry {
        &self.models[0]
    }

    /// The backend index of reward model `name`.
    pub fn reward_index(&self, name: &str) -> Option<ModelIndex> {
        self.models.iter().position(|m| m.reward_name.as_deref() == Some(name))
    }

    /// The reward names, sorted.
    pub fn reward_names(&self) -> Vec<&str> {
        self.models.iter().filter_map(|m| m.reward_name.as_deref()).collect()
    }

    /// Checks the cluster (invariants 6 and 7) and computes V and the effective context.
    /// `models[0]` is the base.
    pub fn new(models: Vec<ModelEntry>) -> Result<Self, CatalogError> {
        let base = models.first().ok_or(CatalogError::NoBase)?;
        let vocab = base.text.vocab_size();
        if vocab == 0 {
            return Err(CatalogError::EmptyTokenizer { model: base.display_name() });
        }
        if (base.vocab_size as usize) < vocab {
            return Err(CatalogError::BaseShortLogits {
                model: base.display_name(),
                logits: base.vocab_size,
                vocab,
            });
        }
        for arm in &models[1..] {
            check_arm(base, vocab, arm)?;
        }
        let max_context = models.iter().map(|m| m.max_positions).min().unwrap_or(0);
        if max_context < 2 {
            return Err(CatalogError::ContextTooShort(max_context));
        }
        Ok(Catalog { models, vocab, max_context })
    }
}

/// Checks an ARM against the base (invariant 6): at least `vocab` logits, and the same tokens
/// on ids [0, vocab). Errors name both models.
pub fn check_arm(base: &ModelEntry, vocab: usize, arm: &ModelEntry) -> Result<(), CatalogError> {
    let reward_name = || arm.reward_name.clone().unwrap_or_else(|| "?".into());
    if (arm.vocab_size as usize) < vocab {
        return Err(CatalogError::ArmShortLogits {
            reward_name: reward_name(),
            arm_model: arm.model_id.clone(),
            logits: arm.vocab_size,
            base_model: base.model_id.clone(),
            vocab,
        });
    }
    if arm.text.fingerprint(vocab) != base.text.fingerprint(vocab) {
        let first_diff = (0..vocab as u32)
            .find(|&id| arm.text.tokenizer().id_to_token(id) != base.text.tokenizer().id_to_token(id));
        let detail = first_diff
            .map(|id| {
                format!(
                    " (first difference at id {id}: {:?} vs {:?})",
                    base.text.tokenizer().id_to_token(id),
                    arm.text.tokenizer().id_to_token(id)
                )
            })
            .unwrap_or_default();
        return Err(CatalogError::VocabMismatch {
            reward_name: reward_name(),
            arm_model: arm.model_id.clone(),
            base_model: base.model_id.clone(),
            vocab,
            detail,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, reward: Option<&str>, fixture: &str, vocab_size: u32, max_pos: u32) -> ModelEntry {
        ModelEntry { vocab_size, ..crate::testing::fixture_entry(index, reward, fixture, max_pos) }
    }

    #[test]
    fn catalog_takes_the_smallest_context_and_base_vocab() {
        let c = Catalog::new(vec![
            entry(0, None, "llama-mha", 512, 512),
            entry(1, Some("a"), "qwen2-bias", 600, 256),
        ])
        .unwrap();
        assert_eq!(c.max_context, 256);
        assert_eq!(c.vocab, c.base().text.vocab_size());
        assert_eq!(c.reward_index("a"), Some(1));
        assert_eq!(c.reward_names(), vec!["a"]);
    }

    #[test]
    fn an_arm_with_too_few_logits_is_refused_naming_both_models() {
        let e = Catalog::new(vec![
            entry(0, None, "llama-mha", 512, 512),
            entry(1, Some("a"), "qwen2-bias", 100, 512),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("qwen2-bias") && e.contains("llama-mha") && e.contains("100"), "{e}");
    }

    #[test]
    fn an_arm_with_another_vocabulary_is_refused_naming_both_models() {
        let mut arm = entry(1, Some("helpful"), "qwen2-bias", 512, 512);
        // A tokenizer with a different vocabulary: swap the ids of two tokens.
        let dir = genarm_testkit::fixture_dir("qwen2-bias");
        let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let key_of =
            |id: u64| vocab.iter().find(|(_, x)| x.as_u64() == Some(id)).map(|(k, _)| k.clone()).unwrap();
        let (a, b) = (key_of(300), key_of(301));
        vocab.insert(a, 301.into());
        vocab.insert(b, 300.into());
        let json = serde_json::to_string(&v).unwrap();
        arm.text = Arc::new(ModelText::new("qwen2-bias", &json, None, Some(0), vec![0], false).unwrap());
        let e = Catalog::new(vec![entry(0, None, "llama-mha", 512, 512), arm]).unwrap_err().to_string();
        assert!(e.contains("qwen2-bias") && e.contains("llama-mha") && e.contains("helpful"), "{e}");
        assert!(e.contains("id 300"), "{e}");
    }
}
