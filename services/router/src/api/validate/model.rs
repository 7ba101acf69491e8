//! The `model` field: it must name the served base model (a reward model's name gets a 400
//! saying how to use it as guidance; anything else a 404).

use super::ValidationConfig;
use crate::api::error::ApiError;
use crate::workers::Catalog;

/// `model` must name the served base model (404 otherwise).
pub fn check_model(model: &str, cfg: &ValidationConfig, catalog: &Catalog) -> Result<(), ApiError> {
    if model == cfg.served_model {
        return Ok(());
    }
    if catalog.reward_index(model).is_some() {
        return Err(ApiError::invalid(
            "model",
            format!(
                "`{model}` is a reward model: it guides generation but does not generate; set \"model\": \"{}\" \
                 and put `{model}` in \"guidance\": {{\"rewards\": {{\"{model}\": 1.0}}}}",
                cfg.served_model
            ),
        ));
    }
    Err(ApiError::ModelNotFound { requested: model.to_string(), served: cfg.served_model.clone() })
}
