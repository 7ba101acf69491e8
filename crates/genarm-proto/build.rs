//! Compiles `proto/genarm/v1/worker.proto` into Rust (client and server) under `OUT_DIR`.

use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../proto");
    let proto = root.join("genarm/v1/worker.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    let result = tonic_prost_build::configure()
        // Logits travel as `bytes::Bytes`: decoding slices the received buffer instead of copying.
        .bytes(".genarm.v1.SeqResult.logits")
        .compile_protos(&[proto.as_path()], &[root.as_path()]);
    if let Err(e) = result {
        panic!(
            "cannot compile {}: {e}\n\
             genarm-proto needs `protoc` (the Protocol Buffers compiler): install it with \
             `apt-get install protobuf-compiler` (Debian/Ubuntu) or `brew install protobuf`, \
             or point the PROTOC environment variable at the binary",
            proto.display()
        );
    }
}
