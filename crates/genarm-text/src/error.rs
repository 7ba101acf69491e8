//! `TextError`: everything that can go wrong turning requests into prompt ids and ids into text.

/// An error of this crate. Each message names the model, the cause and what to do about it.
///
/// For the router: [`TextError::TemplateException`] and [`TextError::TemplateRender`] depend on
/// the request's messages (a 400), [`TextError::NoChatTemplate`] and
/// [`TextError::TemplateSyntax`] on the model (a 400 telling the user to send a raw prompt to
/// `/v1/completions`); the others are server-side problems.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The worker's `tokenizer.json` text could not be loaded.
    #[error(
        "model {model}: its tokenizer.json cannot be loaded ({reason}); the worker must serve a \
         tokenizer.json that the tokenizers library reads"
    )]
    Tokenizer {
        /// The model's name.
        model: String,
        /// What the tokenizers library reported.
        reason: String,
    },
    /// The model has no chat template, so chat requests cannot be rendered.
    #[error(
        "model {model} has no chat template, so /v1/chat/completions cannot format messages for it; \
         send an already formatted prompt to /v1/completions instead"
    )]
    NoChatTemplate {
        /// The model's name.
        model: String,
    },
    /// The model's chat template does not compile.
    #[error(
        "model {model}: its chat template does not compile ({reason}); fix the chat_template of the \
         model's tokenizer_config.json (or GGUF metadata), or send an already formatted prompt to \
         /v1/completions"
    )]
    TemplateSyntax {
        /// The model's name.
        model: String,
        /// What the template engine reported.
        reason: String,
    },
    /// The chat template called `raise_exception(message)`: it refuses these messages.
    #[error("model {model}'s chat template rejected the messages: {message}")]
    TemplateException {
        /// The model's name.
        model: String,
        /// The message the template passed to `raise_exception`.
        message: String,
    },
    /// Rendering the chat template failed (an error inside the template, or a resource limit).
    #[error(
        "model {model}: rendering its chat template failed ({reason}); check that the messages have \
         the roles and content the model expects, or send an already formatted prompt to /v1/completions"
    )]
    TemplateRender {
        /// The model's name.
        model: String,
        /// What the template engine reported.
        reason: String,
    },
    /// The tokenizer failed to encode a prompt.
    #[error("model {model}: encoding the prompt failed ({reason})")]
    Encode {
        /// The model's name.
        model: String,
        /// What the tokenizers library reported.
        reason: String,
    },
    /// The tokenizer failed to decode ids.
    #[error("model {model}: decoding token ids failed ({reason})")]
    Decode {
        /// The model's name.
        model: String,
        /// What the tokenizers library reported.
        reason: String,
    },
}

impl TextError {
    /// Whether the error is caused by what the request asked for (an HTTP 400), as opposed to a
    /// broken model or server (a 500).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            TextError::NoChatTemplate { .. }
                | TextError::TemplateSyntax { .. }
                | TextError::TemplateException { .. }
                | TextError::TemplateRender { .. }
        )
    }
}
