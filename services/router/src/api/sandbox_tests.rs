//! The chat-template sandbox in the router, over the fake backend: a model whose chat template
//! builds huge strings fails chat requests with a 400 naming the memory budget (its sandbox
//! child, the genarm-router binary, runs out of memory and dies) and the router keeps serving;
//! normal templates give the same prompts sandboxed as in process.

use std::sync::Arc;

use genarm_text::{ModelText, TemplateSandbox};
use serde_json::{json, Value};

use crate::api::routes_tests::{serve_catalog, Server};
use crate::api::validate::ValidationConfig;
use crate::testing::{fixture_catalog, fixture_entry};
use crate::workers::Catalog;

/// `fuzz/corpus/chat_template/oom-string-doubling`'s template: `'ab'` doubled 40 times.
const DOUBLING: &str = "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}\
                        {% endfor %}{{ ns.s|length }}";

/// A sandbox whose children are the built genarm-router binary (`cargo build --bins` first).
fn router_sandbox() -> Arc<TemplateSandbox> {
    let program = genarm_testkit::cluster::bin_path("genarm-router").unwrap();
    let sandbox = TemplateSandbox::with_program(program, 256 << 20);
    if let Err(e) = sandbox.check() {
        panic!(
            "the built genarm-router does not serve as a sandbox child ({e}): cargo build -p genarm-router"
        );
    }
    Arc::new(sandbox)
}

/// Serves `catalog` over the fake backend, rendering chat templates in `sandbox` (in process
/// for `None`).
async fn serve(catalog: Catalog, sandbox: Option<Arc<TemplateSandbox>>) -> Server {
    let mut validation = ValidationConfig::new("tiny");
    validation.chat_template_sandbox = sandbox;
    serve_catalog(catalog, validation, 16, true, |_| {}).await
}

/// The fixture catalog with the base model's chat template replaced by `template`.
fn catalog_with_base_template(template: &str) -> Catalog {
    let mut base = fixture_entry(0, None, "llama-mha", 512);
    let json =
        std::fs::read_to_string(genarm_testkit::fixture_dir("llama-mha").join("tokenizer.json")).unwrap();
    base.text =
        Arc::new(ModelText::new("llama-mha", &json, Some(template.into()), Some(0), vec![0], false).unwrap());
    Catalog::new(vec![
        base,
        fixture_entry(1, Some("harmless"), "llama-gqa-tied", 512),
        fixture_entry(2, Some("helpful"), "qwen2-bias", 512),
    ])
    .unwrap()
}

fn chat(content: &str) -> Value {
    json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "seed": 1,
           "guidance": {"rewards": {"helpful": 1.0}, "beta": 0.5}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_exhausts_memory_fails_the_request_and_the_router_keeps_serving() {
    let s = serve(catalog_with_base_template(DOUBLING), Some(router_sandbox())).await;
    for _ in 0..2 {
        let (status, v) = s.post_json("/v1/chat/completions", chat("hi")).await;
        assert_eq!(status, 400, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("exhausted its 256 MiB memory budget"), "{v}");
        assert!(message.contains("chat_template"), "{v}");
        assert_eq!(v["error"]["param"], "messages", "{v}");
    }
    let (status, v) = s
        .post_json("/v1/completions", json!({"model": "tiny", "prompt": "Hello there", "max_tokens": 4}))
        .await;
    assert_eq!(status, 200, "the router keeps serving: {v}");
    assert_eq!(v["object"], "text_completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxed_chat_prompts_equal_in_process_ones() {
    let boxed = serve(fixture_catalog(512), Some(router_sandbox())).await;
    let local = serve(fixture_catalog(512), None).await;
    for content in ["What is 12 + 30?", "é \"quoted\" \\ {{ not jinja }} 🦀"] {
        let (status, a) = boxed.post_json("/v1/chat/completions", chat(content)).await;
        assert_eq!(status, 200, "{a}");
        let (status, b) = local.post_json("/v1/chat/completions", chat(content)).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(a["usage"]["prompt_tokens"], b["usage"]["prompt_tokens"], "{a} vs {b}");
        assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"], "{a} vs {b}");
    }
}
