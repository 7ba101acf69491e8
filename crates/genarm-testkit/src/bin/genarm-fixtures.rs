//! `genarm-fixtures [OUT_DIR]`: regenerates the committed fixtures (default: the crate's `fixtures/`).

use std::path::PathBuf;

use anyhow::Result;
use genarm_testkit::{committed_specs, fixture_dir, write_fixture};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let out = match (args.next(), args.next()) {
        (None, _) => fixture_dir(""),
        (Some(a), None) if a == "-h" || a == "--help" => {
            println!("usage: genarm-fixtures [OUT_DIR]");
            println!("Writes the committed test fixtures into OUT_DIR/<name>/.");
            println!("Default OUT_DIR: {}", fixture_dir("").display());
            return Ok(());
        }
        (Some(dir), None) => PathBuf::from(dir),
        _ => anyhow::bail!("usage: genarm-fixtures [OUT_DIR]"),
    };
    for spec in committed_specs() {
        let dir = out.join(&spec.name);
        write_fixture(&dir, &spec)?;
        let bytes: u64 = std::fs::read_dir(&dir)?.map(|e| Ok(e?.metadata()?.len())).sum::<Result<u64>>()?;
        println!("{:<16} {:>9} bytes  {}", spec.name, bytes, dir.display());
    }
    Ok(())
}
