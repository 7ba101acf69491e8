//! Tokenizer from GGUF metadata (stub until the GGUF module lands).
