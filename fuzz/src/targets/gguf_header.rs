//! Corrupt GGUF files through `genarm_model::gguf::read_header`: an error naming the file, never a
//! panic or an allocation sized by the file's claims.

use std::io::Write;

/// Runs one input of the `gguf_header` target (panics on a finding).
pub fn gguf_header(data: &[u8]) {
    let path = std::env::temp_dir().join(format!("genarm-fuzz-gguf-{}.gguf", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("temp file");
    f.write_all(data).expect("write temp file");
    drop(f);
    let _ = genarm_model::gguf::read_header(&path);
}
