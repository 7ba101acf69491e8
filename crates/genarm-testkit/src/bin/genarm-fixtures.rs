//! `genarm-fixtures [OUT_DIR]`: regenerates the committed fixtures (default: the crate's `fixtures/`);
//! `genarm-fixtures --sized NAME:HIDDEN:INTERMEDIATE:LAYERS:HEADS:KV_HEADS:VOCAB OUT_DIR` writes one
//! random Llama of that shape (for benchmarks that need models of chosen sizes).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use genarm_testkit::{committed_specs, fixture_dir, sized_spec, write_fixture, FixtureSpec};

const USAGE: &str = "usage: genarm-fixtures [OUT_DIR]\n       \
     genarm-fixtures --sized NAME:HIDDEN:INTERMEDIATE:LAYERS:HEADS:KV_HEADS:VOCAB OUT_DIR";

fn main() -> Result<()> {
    let args: Vec<_> = std::env::args().skip(1).collect();
    let (specs, out) = match args.as_slice() {
        [] => (committed_specs(), fixture_dir("")),
        [a] if a == "-h" || a == "--help" => {
            println!("{USAGE}");
            println!("Without --sized: writes the committed test fixtures into OUT_DIR/<name>/");
            println!("(default OUT_DIR: {}).", fixture_dir("").display());
            println!("With --sized: writes one random Llama of that shape into OUT_DIR/NAME/, e.g.");
            println!("  --sized arm-38m:384:1024:6:6:2:49152 /tmp/models");
            return Ok(());
        }
        [dir] => (committed_specs(), PathBuf::from(dir)),
        [flag, shape, dir] if flag == "--sized" => (vec![parse_sized(shape)?], PathBuf::from(dir)),
        _ => bail!("{USAGE}"),
    };
    for spec in specs {
        let dir = out.join(&spec.name);
        write_fixture(&dir, &spec)?;
        let bytes: u64 = std::fs::read_dir(&dir)?.map(|e| Ok(e?.metadata()?.len())).sum::<Result<u64>>()?;
        println!("{:<16} {:>11} bytes  {}", spec.name, bytes, dir.display());
    }
    Ok(())
}

fn parse_sized(shape: &str) -> Result<FixtureSpec> {
    let parts: Vec<&str> = shape.split(':').collect();
    let [name, rest @ ..] = parts.as_slice() else { bail!("{USAGE}") };
    let nums = rest
        .iter()
        .map(|p| p.parse::<usize>().with_context(|| format!("`{p}` in `{shape}` is not a whole number")))
        .collect::<Result<Vec<_>>>()?;
    let &[hidden, intermediate, layers, heads, kv_heads, vocab] = nums.as_slice() else {
        bail!("--sized wants NAME and six numbers separated by `:`, got `{shape}`\n{USAGE}")
    };
    if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
        bail!("HIDDEN must be a multiple of HEADS and HEADS a multiple of KV_HEADS (got {hidden}, {heads}, {kv_heads})");
    }
    if vocab < genarm_testkit::TOKENIZER_VOCAB_SIZE {
        bail!("VOCAB must be at least the fixture tokenizer's {} ids", genarm_testkit::TOKENIZER_VOCAB_SIZE);
    }
    Ok(sized_spec(name, hidden, intermediate, layers, heads, kv_heads, vocab))
}
