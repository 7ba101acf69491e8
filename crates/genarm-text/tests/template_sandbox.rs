//! `TemplateSandbox`: chat templates rendered in memory-limited child processes give exactly what
//! rendering in process gives, a template that exhausts memory fails with a clear error instead
//! of killing the process, and the sandbox recovers for the next render.
//!
//! No libtest harness (`harness = false`): the sandbox's children re-execute this binary, so
//! `main` calls `run_sandbox_if_requested()` before anything else. It speaks enough of libtest's
//! command line for `cargo test` and `cargo nextest` (`--list`, `--exact NAME`, name filters).

mod common;

use std::time::{Duration, Instant};

use common::fixture_text;
use genarm_text::{run_sandbox_if_requested, ChatMessage, ModelText, TemplateSandbox, TextError};

/// The fuzz finding `fuzz/corpus/chat_template/oom-string-doubling`: `'ab'` doubled 40 times.
const DOUBLING: &str = "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}\
                        {% endfor %}{{ ns.s|length }}";

const BUDGET: u64 = 256 << 20;

fn user(content: &str) -> ChatMessage {
    ChatMessage::new("user", content)
}

fn sandbox() -> TemplateSandbox {
    TemplateSandbox::new(BUDGET).expect("the test binary's path")
}

/// Conversations that exercise the JSON hop: names, empty content, quotes, control characters,
/// non-ASCII, a NUL, and text that looks like JSON or Jinja.
fn conversations() -> Vec<Vec<ChatMessage>> {
    let mut named = user("Hi  there");
    named.name = Some("bob \"the\" builder".into());
    vec![
        vec![user("What is 12 + 30?")],
        vec![ChatMessage::new("system", "  Be  brief.  "), named, ChatMessage::new("assistant", "")],
        vec![
            user("tab\there\nnewline \\ backslash \u{0} nul \u{1f} unit"),
            user("é ü 日本語 🦀 \u{202e}rtl"),
        ],
        vec![user("{\"role\": \"x\"} {{ messages }} {% raw %}"), ChatMessage::new("tool", "[1, 2.5, null]")],
    ]
}

/// Templates: the fixtures' ChatML, SmolLM2's, the kitchen sink (Python methods, tojson, loops),
/// and ones that print the context's structure (key order, types) directly.
fn templates() -> Vec<(&'static str, String)> {
    vec![
        ("fixture", common::chat_template("llama-mha")),
        ("smollm2", include_str!("data/smollm2_chat_template.jinja").to_string()),
        ("kitchen_sink", include_str!("data/kitchen_sink_template.jinja").to_string()),
        (
            "structure",
            "{{ messages|tojson }}|{% for m in messages %}{% for k, v in m.items() %}{{ k }}={{ v }};\
             {% endfor %}{% endfor %}|{{ add_generation_prompt }} {{ tools }} {{ documents }} \
             {{ bos_token }} {{ eos_token }} {{ messages|length }}"
                .to_string(),
        ),
    ]
}

fn a_normal_template_renders_identically_in_process_and_sandboxed() {
    let sandbox = sandbox();
    let mut compared = 0;
    for (name, template) in templates() {
        let text = fixture_text("llama-mha", Some(&template), false);
        for messages in conversations() {
            for add_generation_prompt in [false, true] {
                let local = text.render_chat(&messages, add_generation_prompt);
                let boxed = text.render_chat_in(Some(&sandbox), &messages, add_generation_prompt);
                match (&local, &boxed) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "template {name}, messages {messages:?}"),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "template {name}"),
                    _ => panic!("template {name}: in process {local:?}, sandboxed {boxed:?}"),
                }
                compared += 1;
            }
        }
    }
    // The structure template's output written out independently: insertion order of keys,
    // Python spellings, the name key only where set.
    let text = fixture_text("llama-mha", Some(&templates()[3].1), false);
    let mut named = user("x");
    named.name = Some("bob".into());
    let out =
        text.render_chat_in(Some(&sandbox), &[named, ChatMessage::new("assistant", "y\"")], true).unwrap();
    assert_eq!(
        out,
        "[{\"role\": \"user\", \"content\": \"x\", \"name\": \"bob\"}, {\"role\": \"assistant\", \"content\": \
         \"y\\\"\"}]|role=user;content=x;name=bob;role=assistant;content=y\";|True None None \
         <|endoftext|> <|endoftext|> 2"
    );
    // The fixture's template gives the testkit's prompt.
    let fixture = fixture_text("llama-mha", None, false);
    assert_eq!(
        fixture.render_chat_in(Some(&sandbox), &[user("What is 12 + 30?")], true).unwrap(),
        genarm_testkit::PROMPTS[2]
    );
    println!("  compared {compared} renders");
}

fn raise_exception_maps_to_the_raised_variant() {
    let sandbox = sandbox();
    let template = "{% for m in messages %}{% if m.role == 'system' %}\
        {{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
    let text = fixture_text("llama-mha", Some(template), false);
    assert_eq!(text.render_chat_in(Some(&sandbox), &[user("ok")], true).unwrap(), "ok");
    let err = text.render_chat_in(Some(&sandbox), &[ChatMessage::new("system", "x")], true).unwrap_err();
    match &err {
        TextError::TemplateException { model, message } => {
            assert_eq!(model, "llama-mha");
            assert_eq!(message, "System role not supported");
        }
        other => panic!("expected a template exception, got {other:?}"),
    }
    // Engine errors keep their variant and text.
    let runtime = fixture_text("llama-mha", Some("{{ messages[0].content + 1 }}"), false);
    let local = runtime.render_chat(&[user("x")], true).unwrap_err();
    let boxed = runtime.render_chat_in(Some(&sandbox), &[user("x")], true).unwrap_err();
    assert!(matches!(boxed, TextError::TemplateRender { .. }), "{boxed:?}");
    assert_eq!(local.to_string(), boxed.to_string());
    // So do the limits inside the engine (fuel).
    let endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let endless = fixture_text("llama-mha", Some(endless), false);
    let boxed = endless.render_chat_in(Some(&sandbox), &[user("x")], true).unwrap_err();
    assert!(boxed.to_string().contains("execution limit"), "{boxed}");
    // A template that does not compile never reaches the sandbox.
    let json = common::tokenizer_json("llama-mha");
    let broken = ModelText::new("m", &json, Some("{% for %}".into()), Some(0), vec![0], false).unwrap();
    let err = broken.render_chat_in(Some(&sandbox), &[user("x")], true).unwrap_err();
    assert!(matches!(err, TextError::TemplateSyntax { .. }), "{err:?}");
}

/// Asserts that `template` fails with the memory-budget error within the deadline and that the
/// next render on the same sandbox works.
fn assert_exhausts_the_budget(sandbox: &TemplateSandbox, template: &str) {
    let hungry = fixture_text("llama-mha", Some(template), false);
    let start = Instant::now();
    let err = hungry.render_chat_in(Some(sandbox), &[user("hi")], true).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, TextError::TemplateRender { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("exhausted its 256 MiB memory budget"), "{message}");
    assert!(message.contains("chat_template"), "{message}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let shown: String = template.chars().take(40).collect();
    println!("  {shown:?}... failed after {:.0} ms", took.as_secs_f64() * 1e3);
    let fine = fixture_text("llama-mha", None, false);
    assert_eq!(
        fine.render_chat_in(Some(sandbox), &[user("What is 12 + 30?")], true).unwrap(),
        genarm_testkit::PROMPTS[2],
        "the render after a crash uses a fresh child"
    );
}

fn the_doubling_template_fails_with_the_memory_budget_error_and_the_sandbox_recovers() {
    let sandbox = sandbox();
    // A warm child first, so the crash hits a pooled child.
    let fine = fixture_text("llama-mha", None, false);
    fine.render_chat_in(Some(&sandbox), &[user("x")], true).unwrap();
    assert_exhausts_the_budget(&sandbox, DOUBLING);
    // The other one-instruction amplifiers of the finding.
    assert_exhausts_the_budget(&sandbox, "{{ ('a\nb'|indent(10**12))|length }}");
    assert_exhausts_the_budget(&sandbox, "{{ '{:>1000000000000}'.format('a')|length }}");
    assert_exhausts_the_budget(
        &sandbox,
        "{% set ns = namespace(s='aaaaaaaaaaaaaaaa') %}{% for i in range(10) %}\
         {% set ns.s = ns.s.replace('a', ns.s) %}{% endfor %}{{ ns.s|length }}",
    );
    let mut chain = String::from("{% set a0 = 'abcdefgh' %}");
    for i in 0..40 {
        chain.push_str(&format!("{{% set a{} = a{i} ~ a{i} %}}", i + 1));
    }
    chain.push_str("{{ a40|length }}");
    assert_exhausts_the_budget(&sandbox, &chain);
}

fn concurrent_renders_each_get_their_answer() {
    let sandbox = sandbox();
    let template = "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}";
    let text = fixture_text("llama-mha", Some(template), false);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (sandbox, text) = (&sandbox, &text);
            scope.spawn(move || {
                for i in 0..25 {
                    let content = format!("thread {t} render {i}");
                    let out = text.render_chat_in(Some(sandbox), &[user(&content)], false).unwrap();
                    assert_eq!(out, format!("[user:{content}]"));
                }
            });
        }
    });
}

/// This process's children (Linux: every thread's `children` list; empty elsewhere).
fn child_processes() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .map(|c| c.split_whitespace().count())
        .sum()
}

fn renders_beyond_the_cpu_count_wait_for_a_child() {
    let sandbox = sandbox();
    let cap = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 16);
    // About a second of work per render (it may run out of fuel: an error, not a hang).
    let slow = "{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}done";
    let text = fixture_text("llama-mha", Some(slow), false);
    let busy = std::sync::atomic::AtomicBool::new(true);
    let most = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0;
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(child_processes());
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        });
        let renders: Vec<_> = (0..cap + 3)
            .map(|_| scope.spawn(|| text.render_chat_in(Some(&sandbox), &[user("x")], false)))
            .collect();
        for r in renders {
            match r.join().unwrap() {
                Ok(out) => assert_eq!(out, "done"),
                Err(e) => assert!(e.to_string().contains("execution limit"), "{e}"),
            }
        }
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert!(most >= 1, "no sandbox child was seen");
    assert!(most <= cap, "{most} sandbox children at once, more than the {cap} allowed");
}

fn broken_children_are_clear_errors() {
    // `cat` echoes the request: not a reply.
    let echo = TemplateSandbox::with_program("/bin/cat", BUDGET);
    let text = fixture_text("llama-mha", None, false);
    let err = text.render_chat_in(Some(&echo), &[user("x")], true).unwrap_err();
    assert!(err.to_string().contains("malformed reply"), "{err}");
    // `true` exits at once: the child died.
    let gone = TemplateSandbox::with_program("/bin/true", BUDGET);
    let err = text.render_chat_in(Some(&gone), &[user("x")], true).unwrap_err();
    assert!(err.to_string().contains("memory budget (or crashed)"), "{err}");
    let missing = TemplateSandbox::with_program("/nonexistent/genarm-template-child", BUDGET);
    let err = text.render_chat_in(Some(&missing), &[user("x")], true).unwrap_err();
    assert!(err.to_string().contains("cannot start"), "{err}");
}

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    (
        "a_normal_template_renders_identically_in_process_and_sandboxed",
        a_normal_template_renders_identically_in_process_and_sandboxed,
    ),
    ("raise_exception_maps_to_the_raised_variant", raise_exception_maps_to_the_raised_variant),
    (
        "the_doubling_template_fails_with_the_memory_budget_error_and_the_sandbox_recovers",
        the_doubling_template_fails_with_the_memory_budget_error_and_the_sandbox_recovers,
    ),
    ("concurrent_renders_each_get_their_answer", concurrent_renders_each_get_their_answer),
    ("renders_beyond_the_cpu_count_wait_for_a_child", renders_beyond_the_cpu_count_wait_for_a_child),
    ("broken_children_are_clear_errors", broken_children_are_clear_errors),
];

fn main() {
    run_sandbox_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    if flag("--list") {
        // `--list --ignored` lists the ignored tests: there are none.
        if !flag("--ignored") {
            for (name, _) in TESTS {
                println!("{name}: test");
            }
        }
        return;
    }
    // libtest options that take a value; everything else not starting with `-` is a filter.
    let with_value = ["--test-threads", "--skip", "--format", "--color", "-Z", "--logfile"];
    let mut filters = Vec::new();
    let mut skip_next = false;
    for a in &args {
        if skip_next {
            skip_next = false;
        } else if with_value.contains(&a.as_str()) {
            skip_next = true;
        } else if !a.starts_with('-') {
            filters.push(a.as_str());
        }
    }
    let exact = flag("--exact");
    let selected = |name: &str| {
        filters.is_empty() || filters.iter().any(|f| if exact { name == *f } else { name.contains(f) })
    };
    let mut ran = 0;
    for (name, test) in TESTS.iter().filter(|(name, _)| selected(name)) {
        let start = Instant::now();
        test();
        println!("test {name} ... ok ({:.2} s)", start.elapsed().as_secs_f64());
        ran += 1;
    }
    println!("test result: ok. {ran} passed");
}
