//! `genarm merge`: a backbone with a LoRA adapter merged in (or any model genarm opens, GGUF
//! included) written as a full Hugging Face model directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use genarm_model::ModelAssets;

/// Flags of `genarm merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The model: a Hugging Face model directory, a .gguf file, or a PEFT LoRA adapter directory
    /// whose base_model_name_or_path is a local backbone (then --lora is not needed).
    #[arg(long, env = "GENARM_MERGE_MODEL", value_name = "PATH")]
    pub model: PathBuf,

    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to merge
    /// into --model: each targeted weight becomes W + (lora_alpha / r) · B · A.
    #[arg(long, env = "GENARM_MERGE_LORA", value_name = "ADAPTER")]
    pub lora: Option<PathBuf>,

    /// The output directory: config.json, model.safetensors (f32), tokenizer.json,
    /// tokenizer_config.json and generation_config.json, loadable by genarm and by transformers.
    /// It must not exist or be empty, unless --force.
    #[arg(long, env = "GENARM_MERGE_OUT", value_name = "DIR")]
    pub out: PathBuf,

    /// Replace the output directory if it already holds files.
    #[arg(long, env = "GENARM_MERGE_FORCE")]
    pub force: bool,
}

fn non_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Runs `genarm merge`: opens the model (with the adapter), writes it to a temporary sibling of
/// `--out`, then moves it into place, so `--out` never holds half a model.
pub fn run(args: MergeArgs) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {} exists and is not a directory", args.out.display());
    }
    if non_empty_dir(&args.out)? && !args.force {
        bail!(
            "--out {} is not empty; choose another directory or pass --force to replace it",
            args.out.display()
        );
    }
    let assets = match &args.lora {
        None => ModelAssets::open(&args.model),
        Some(lora) => ModelAssets::open_with_lora(&args.model, lora),
    }
    .with_context(|| format!("opening --model {}", args.model.display()))?;
    let name = args.out.file_name().context("--out has no directory name")?.to_string_lossy().into_owned();
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{name}.genarm-merge-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    eprintln!(
        "genarm merge: writing {} ({} layers, {} parameters) to {}",
        assets.model_id,
        assets.config.num_hidden_layers,
        assets.config.num_parameters(),
        args.out.display()
    );
    if let Err(e) = genarm_model::save_hf_dir(&assets, &staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e).with_context(|| format!("writing {}", args.out.display()));
    }
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("removing the old {}", args.out.display()))?;
    }
    std::fs::rename(&staging, &args.out)
        .with_context(|| format!("moving {} to {}", staging.display(), args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
