//! genarm-text: what the router does with text for each model — chat templates, prompt
//! encoding, streaming detokenization, stop strings — and the vocabulary fingerprint that proves
//! two models share token ids.
//!
//! Build a [`ModelText`] per model from its worker's `Info`; render chats with
//! [`ModelText::render_chat`], encode prompts with [`ModelText::encode_prompt`], turn generated
//! ids into streamed text with a [`StreamDecoder`] and cut it at stop strings with a
//! [`StopMatcher`]. Templates from untrusted model directories render in a memory-limited child
//! process through a [`TemplateSandbox`] ([`ModelText::render_chat_in`]).

mod chat;
mod detokenize;
mod error;
pub mod fingerprint;
mod model_text;
mod pyjson;
mod stop;
pub mod strftime;
mod template;
mod template_sandbox;

pub use chat::ChatMessage;
pub use detokenize::StreamDecoder;
pub use error::TextError;
pub use fingerprint::vocab_fingerprint;
pub use model_text::ModelText;
pub use stop::{StopMatcher, StopOutcome};
pub use template_sandbox::{run_sandbox_if_requested, TemplateSandbox, SANDBOX_ENV};
