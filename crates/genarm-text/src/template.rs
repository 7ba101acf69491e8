//! `ChatTemplate`: one model's compiled HF chat template and the Jinja environment transformers
//! renders it in (trim/lstrip blocks, `raise_exception`, `strftime_now`, Python-style `tojson`,
//! Python string and dict methods, loop controls), with limits against runaway templates.

use std::fmt;
use std::io;

use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior};

use crate::pyjson;
use crate::strftime;

/// The name the template is registered under (appears in engine error messages).
const TEMPLATE_NAME: &str = "chat_template";
/// Instructions one render may execute (a few milliseconds' worth is typical; this is ~1 s).
const FUEL: u64 = 50_000_000;
/// Deepest nesting of macro calls, includes and recursive loops.
const RECURSION_LIMIT: usize = 100;
/// Longest rendered prompt.
const MAX_OUTPUT_BYTES: usize = 64 << 20;

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
}

/// Why rendering failed.
#[derive(Debug)]
pub(crate) enum RenderFailure {
    /// The template called `raise_exception(message)`.
    Raised(String),
    /// Any other error (the engine's description).
    Other(String),
}

/// The error `raise_exception` puts behind the engine's error, so rendering can tell a
/// template's deliberate refusal from a failure.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source` in a transformers-compatible environment; the error is the engine's
    /// description of the syntax problem.
    pub(crate) fn compile(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_formatter(python_formatter);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: String| strftime::strftime_now(&format));
        env.add_filter("tojson", pyjson::tojson);
        env.add_template_owned(TEMPLATE_NAME, neutralize_generation_tags(source))
            .map_err(|e| describe(&e))?;
        Ok(ChatTemplate { env })
    }

    /// Renders the template with `ctx` (a map of the variables).
    pub(crate) fn render(&self, ctx: Value) -> Result<String, RenderFailure> {
        let classify = |e: Error| match raised_message(&e) {
            Some(m) => RenderFailure::Raised(m),
            None => RenderFailure::Other(describe(&e)),
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(classify)?;
        let mut out = CappedWriter { buf: Vec::new(), overflowed: false };
        if let Err(e) = template.render_captured_to(ctx, &mut out) {
            if out.overflowed {
                return Err(RenderFailure::Other(format!(
                    "the rendered prompt exceeds {} MiB",
                    MAX_OUTPUT_BYTES >> 20
                )));
            }
            return Err(classify(e));
        }
        String::from_utf8(out.buf)
            .map_err(|_| RenderFailure::Other("the template produced invalid UTF-8".into()))
    }
}

/// Prints `{{ value }}` as Jinja2 does for the values whose Python spelling differs:
/// `True`/`False`/`None`; everything else as MiniJinja prints it.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }).map_err(Error::from),
        ValueKind::None => out.write_str("None").map_err(Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// `raise_exception(message)`: fails the render with the template's message.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

/// The message of a `raise_exception` call somewhere in `err`'s source chain.
fn raised_message(err: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<RaisedException>() {
            return Some(r.0.clone());
        }
        cur = e.source();
    }
    None
}

/// The engine's error as one line: kind, detail and template line.
fn describe(err: &Error) -> String {
    match err.kind() {
        ErrorKind::OutOfFuel => {
            format!("the template ran past its execution limit of {FUEL} instructions (an endless loop?)")
        }
        _ => err.to_string(),
    }
}

/// Rewrites transformers' `{% generation %}` / `{% endgeneration %}` tags (which only mark
/// assistant text for training masks) into `{% if true %}` / `{% endif %}`, keeping their
/// whitespace control, since MiniJinja does not know them.
fn neutralize_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match rewrite_generation_tag(tag) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &tag[consumed..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with a (end)generation block tag, its replacement and length.
fn rewrite_generation_tag(tag: &str) -> Option<(String, usize)> {
    let body = &tag[2..];
    let (open_ctl, body) = match body.chars().next() {
        Some(c @ ('-' | '+')) => (c.to_string(), &body[1..]),
        _ => (String::new(), body),
    };
    let trimmed = body.trim_start();
    let (word, replacement_word) = if trimmed.starts_with("endgeneration") {
        ("endgeneration", "endif")
    } else if trimmed.starts_with("generation") {
        ("generation", "if true")
    } else {
        return None;
    };
    let after_word = trimmed[word.len()..].trim_start();
    let (close_ctl, after_ctl) = match after_word.chars().next() {
        Some(c @ ('-' | '+')) => (c.to_string(), &after_word[1..]),
        _ => (String::new(), after_word),
    };
    let after = after_ctl.strip_prefix("%}")?;
    let consumed = tag.len() - after.len();
    Some((format!("{{%{open_ctl} {replacement_word} {close_ctl}%}}"), consumed))
}

/// An output buffer that refuses to grow past [`MAX_OUTPUT_BYTES`].
struct CappedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("rendered prompt too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str) -> Result<String, RenderFailure> {
        ChatTemplate::compile(source).unwrap().render(minijinja::context! { x => "  hi  " })
    }

    #[test]
    fn generation_tags_are_neutralized() {
        assert_eq!(
            neutralize_generation_tags("a{% generation %}b{%- endgeneration -%} c{%if x%}{% generations %}"),
            "a{% if true %}b{%- endif -%} c{%if x%}{% generations %}"
        );
        assert_eq!(render("[{% generation %}{{ x.strip() }}{% endgeneration %}]").unwrap(), "[hi]");
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let out = render("{% if true %}\n  a\n  {% endif %}\nb\n").unwrap();
        assert_eq!(out, "  a\nb");
    }

    #[test]
    fn limits_stop_runaway_templates() {
        let e = render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
        assert!(matches!(&e, Err(RenderFailure::Other(m)) if m.contains("execution limit")), "{e:?}");
        let e = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        assert!(matches!(&e, Err(RenderFailure::Other(_))), "{e:?}");
        let e =
            render("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(80) %}{{ ns.s }}{% endfor %}");
        assert!(matches!(&e, Err(RenderFailure::Other(m)) if m.contains("MiB")), "{e:?}");
    }

    #[test]
    fn values_print_like_python() {
        assert_eq!(
            render("{{ true }} {{ false }} {{ none }} {{ undefined_var }}|{{ [1, 'a'] }}").unwrap(),
            "True False None |[1, \"a\"]"
        );
    }

    #[test]
    fn raise_exception_is_recognized() {
        let e = render("{% if x %}{{ raise_exception('roles must alternate') }}{% endif %}");
        assert!(matches!(&e, Err(RenderFailure::Raised(m)) if m == "roles must alternate"), "{e:?}");
    }
}
