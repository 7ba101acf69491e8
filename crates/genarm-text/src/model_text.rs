//! `ModelText`: one model's text handling — its chat template, its prompt encoding (BOS rule),
//! its decoding — built from what the model's worker reports in `Info`.

use std::str::FromStr;
use std::sync::Arc;

use minijinja::Value;
use tokenizers::Tokenizer;

use crate::chat::ChatMessage;
use crate::detokenize::StreamDecoder;
use crate::error::TextError;
use crate::fingerprint::vocab_fingerprint;
use crate::template::{ChatTemplate, RenderFailure};
use crate::template_sandbox::TemplateSandbox;

/// One model's tokenizer, chat template and special ids.
///
/// Cheap to share (`Send + Sync`; wrap in an `Arc`); every method takes `&self`.
pub struct ModelText {
    model: String,
    tokenizer: Arc<Tokenizer>,
    /// `None`: the model has no template; `Some(Err)`: it does not compile.
    template: Option<Result<ChatTemplate, String>>,
    /// The template's source, for rendering in a [`TemplateSandbox`].
    template_source: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    add_bos_token: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ModelText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelText")
            .field("model", &self.model)
            .field("vocab_size", &self.vocab_size())
            .field("has_chat_template", &self.template.is_some())
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("add_bos_token", &self.add_bos_token)
            .finish()
    }
}

impl ModelText {
    /// Builds a model's text handling from its worker's `Info`: the `tokenizer.json` text, the
    /// chat template (if any), the BOS id, the EOS ids, and whether prompts get BOS prepended.
    /// `model` names the model in errors.
    ///
    /// Fails only if the tokenizer cannot be loaded. A chat template that does not compile is
    /// reported by [`ModelText::check_chat_template`] and by every [`ModelText::render_chat`],
    /// so that the model still serves `/v1/completions`. Padding and truncation configured in
    /// `tokenizer.json` are switched off (prompts are never silently cut).
    pub fn new(
        model: &str,
        tokenizer_json: &str,
        chat_template: Option<String>,
        bos_token_id: Option<u32>,
        eos_token_ids: Vec<u32>,
        add_bos_token: bool,
    ) -> Result<Self, TextError> {
        let tokenizer_err = |reason: String| TextError::Tokenizer { model: model.to_string(), reason };
        let mut tokenizer = Tokenizer::from_str(tokenizer_json).map_err(|e| tokenizer_err(e.to_string()))?;
        tokenizer.with_truncation(None).map_err(|e| tokenizer_err(e.to_string()))?;
        tokenizer.with_padding(None);
        let token_text = |id: u32| tokenizer.id_to_token(id);
        let bos_token = bos_token_id.and_then(token_text);
        let eos_token = eos_token_ids.first().copied().and_then(token_text);
        let template = chat_template.as_deref().map(ChatTemplate::compile);
        Ok(ModelText {
            model: model.to_string(),
            tokenizer: Arc::new(tokenizer),
            template,
            template_source: chat_template,
            bos_token_id,
            eos_token_ids,
            add_bos_token,
            bos_token,
            eos_token,
        })
    }

    /// The model's name, as given to [`ModelText::new`].
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Whether chat requests can be rendered: `Ok` if the model has a chat template that
    /// compiles, else the error [`ModelText::render_chat`] would give (for a startup warning).
    pub fn check_chat_template(&self) -> Result<(), TextError> {
        self.chat_template().map(|_| ())
    }

    /// Renders `messages` with the model's chat template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does.
    ///
    /// The template sees `messages` (each with `role`, `content` and `name` if set),
    /// `add_generation_prompt`, `bos_token` and `eos_token` (the token texts of the BOS id and
    /// the first EOS id; undefined when absent), `tools = none` and `documents = none`, and the
    /// helpers `raise_exception`, `strftime_now` (UTC), Python string/dict methods and
    /// Python-style `tojson`. A template's `raise_exception(msg)` gives
    /// [`TextError::TemplateException`] carrying `msg`.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        self.render_chat_in(None, messages, add_generation_prompt)
    }

    /// [`ModelText::render_chat`] in `sandbox`'s memory-limited child process (in this process
    /// when `None`). A template that exhausts the child's memory budget, crashes it or runs
    /// past its deadline gives [`TextError::TemplateRender`] saying so; the sandbox replaces the
    /// child for the next render.
    pub fn render_chat_in(
        &self,
        sandbox: Option<&TemplateSandbox>,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let template = self.chat_template()?;
        let ctx = self.chat_context(messages, add_generation_prompt);
        let rendered = match (sandbox, &self.template_source) {
            (Some(sandbox), Some(source)) => sandbox.render(source, &ctx),
            _ => template.render(ctx),
        };
        rendered.map_err(|failure| match failure {
            RenderFailure::Raised(message) => {
                TextError::TemplateException { model: self.model.clone(), message }
            }
            RenderFailure::Other(reason) => TextError::TemplateRender { model: self.model.clone(), reason },
        })
    }

    /// The variables a chat template sees (see [`ModelText::render_chat`]).
    fn chat_context(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Value {
        let mut vars: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        if let Some(bos) = &self.bos_token {
            vars.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            vars.push(("eos_token", Value::from(eos.as_str())));
        }
        vars.into_iter().collect()
    }

    /// Encodes a prompt (raw, or rendered by [`ModelText::render_chat`]) into this model's ids.
    ///
    /// The tokenizer's post-processor adds no special tokens (`add_special_tokens=false`);
    /// special tokens written in the text (`<|im_start|>`) become their single ids. Then, if the
    /// model adds BOS and has a BOS id, BOS is prepended unless the ids already start with it
    /// (a template that writes BOS itself does not get a second one).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| TextError::Encode { model: self.model.clone(), reason: e.to_string() })?;
        let ids = encoding.get_ids();
        match self.bos_token_id {
            Some(bos) if self.add_bos_token && ids.first() != Some(&bos) => {
                let mut with_bos = Vec::with_capacity(ids.len() + 1);
                with_bos.push(bos);
                with_bos.extend_from_slice(ids);
                Ok(with_bos)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// The tokenizer's size including added tokens (`get_vocab_size(true)`); for the base model,
    /// the V every model's logits are cut to.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The [`vocab_fingerprint`] of this tokenizer over ids `[0, n)`.
    pub fn fingerprint(&self, n: usize) -> [u8; 32] {
        vocab_fingerprint(&self.tokenizer, n)
    }

    /// Whether `id` ends generation for this model (one of its EOS ids).
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// The model's EOS ids.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The model's BOS id, if it has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Whether [`ModelText::encode_prompt`] prepends BOS.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// Decodes ids to text, skipping special tokens (EOS, `<|im_end|>`, ...) as OpenAI's text
    /// output does. Equals the concatenation of a [`StreamDecoder`]'s output over the same ids.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TextError::Decode { model: self.model.clone(), reason: e.to_string() })
    }

    /// The text of one token as OpenAI's `logprobs` show it: decoded on its own, special tokens
    /// included, an incomplete UTF-8 sequence as U+FFFD.
    pub fn token_text(&self, id: u32) -> Result<String, TextError> {
        self.tokenizer
            .decode(&[id], false)
            .map_err(|e| TextError::Decode { model: self.model.clone(), reason: e.to_string() })
    }

    /// An incremental decoder for a generation starting from nothing: its output concatenates to
    /// [`ModelText::decode`] of the generated ids.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new(self.tokenizer.clone())
    }

    /// An incremental decoder for ids generated after `prompt_ids`: the last few prompt ids are
    /// decoded as context, so that tokenizers which drop a leading space at the start of a
    /// decode (SentencePiece) keep the space the generated text begins with.
    pub fn stream_decoder_after(&self, prompt_ids: &[u32]) -> StreamDecoder {
        StreamDecoder::with_context(self.tokenizer.clone(), prompt_ids)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer, shared.
    pub fn tokenizer_arc(&self) -> Arc<Tokenizer> {
        self.tokenizer.clone()
    }

    /// The compiled template or why there is none.
    fn chat_template(&self) -> Result<&ChatTemplate, TextError> {
        match &self.template {
            None => Err(TextError::NoChatTemplate { model: self.model.clone() }),
            Some(Err(reason)) => {
                Err(TextError::TemplateSyntax { model: self.model.clone(), reason: reason.clone() })
            }
            Some(Ok(t)) => Ok(t),
        }
    }
}

/// The router shares these across tasks and threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ModelText>();
    assert_send_sync::<StreamDecoder>();
};
