//! The vocabulary fingerprint: SHA-256 over the tokens of ids `[0, n)`.

use sha2::{Digest, Sha256};

/// SHA-256 over the token strings of ids `[0, n)`, each as a little-endian u32 length followed
/// by its UTF-8 bytes (`u32::MAX` and no bytes for an id the tokenizer lacks). Two models whose
/// fingerprints over the base vocabulary's range agree map every id the router samples to the
/// same token; ids past `n` (extra rows of an ARM) do not take part.
pub fn vocab_fingerprint(tokenizer: &tokenizers::Tokenizer, n: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    for id in 0..n as u32 {
        match tokenizer.id_to_token(id) {
            Some(tok) => {
                h.update((tok.len() as u32).to_le_bytes());
                h.update(tok.as_bytes());
            }
            None => h.update(u32::MAX.to_le_bytes()),
        }
    }
    h.finalize().into()
}
