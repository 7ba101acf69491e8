//! Fixture writing: determinism, the committed fixtures against a fresh regeneration, vocab rules.

use std::path::Path;

use genarm_testkit::*;

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn writing_twice_gives_identical_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for spec in committed_specs() {
        write_fixture(&a.path().join(&spec.name), &spec).unwrap();
        write_fixture(&b.path().join(&spec.name), &spec).unwrap();
        for file in FIXTURE_FILES {
            let (x, y) = (read(&a.path().join(&spec.name), file), read(&b.path().join(&spec.name), file));
            assert!(x == y, "{}/{file} differs between two writes", spec.name);
        }
    }
}

#[test]
fn committed_fixtures_match_the_code() {
    let fresh = tempfile::tempdir().unwrap();
    for spec in committed_specs() {
        let (committed, new) = (fixture_dir(&spec.name), fresh.path().join(&spec.name));
        write_fixture(&new, &spec).unwrap();
        assert_eq!(file_names(&committed), file_names(&new), "{}", committed.display());
        for file in FIXTURE_FILES {
            assert!(
                read(&committed, file) == read(&new, file),
                "{}/{file} is stale: run `cargo run -p genarm-testkit --bin genarm-fixtures`",
                committed.display()
            );
        }
    }
}

#[test]
fn committed_fixtures_are_small() {
    for spec in committed_specs() {
        let dir = fixture_dir(&spec.name);
        let bytes: u64 = FIXTURE_FILES.iter().map(|f| read(&dir, f).len() as u64).sum();
        assert!(bytes < 2_000_000, "{} holds {bytes} bytes", spec.name);
    }
}

#[test]
fn tied_fixture_has_no_lm_head_and_qwen2_has_qkv_biases() {
    let names = |name: &str| {
        let bytes = read(&fixture_dir(name), "model.safetensors");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut n: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        n.sort();
        n
    };
    let tied = names("llama-gqa-tied");
    assert!(!tied.iter().any(|n| n == "lm_head.weight"));
    assert!(names("llama-mha").iter().any(|n| n == "lm_head.weight"));
    let qwen = names("qwen2-bias");
    for m in ["q", "k", "v"] {
        assert!(qwen.iter().any(|n| *n == format!("model.layers.1.self_attn.{m}_proj.bias")));
    }
    assert!(!qwen.iter().any(|n| n.contains("o_proj.bias")));
}

#[test]
fn prompts_have_the_documented_lengths() {
    let tok = train_tokenizer().unwrap();
    let lens: Vec<usize> = PROMPTS.iter().map(|p| tok.encode(*p, true).unwrap().len()).collect();
    assert_eq!(lens, [3, 10, 25, 43]);
    let chat = tok.encode(PROMPTS[2], true).unwrap();
    assert_eq!(chat.get_ids()[0], tok.token_to_id(IM_START).unwrap());
}

#[test]
fn vocab_size_may_exceed_the_tokenizer_but_not_undercut_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sized_spec("tiny", 32, 64, 1, 4, 2, TOKENIZER_VOCAB_SIZE + 7);
    write_fixture(dir.path(), &spec).unwrap();
    let bytes = read(dir.path(), "model.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("model.embed_tokens.weight").unwrap().shape(), [TOKENIZER_VOCAB_SIZE + 7, 32]);
    assert_eq!(st.tensor("lm_head.weight").unwrap().shape(), [TOKENIZER_VOCAB_SIZE + 7, 32]);
    let config: serde_json::Value = serde_json::from_slice(&read(dir.path(), "config.json")).unwrap();
    assert_eq!(config["vocab_size"], TOKENIZER_VOCAB_SIZE + 7);

    spec.vocab_size = Some(TOKENIZER_VOCAB_SIZE - 1);
    let err = write_fixture(dir.path(), &spec).unwrap_err().to_string();
    assert!(err.contains("smaller than the tokenizer"), "{err}");
}
