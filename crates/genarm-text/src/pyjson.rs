//! The `tojson` filter as transformers defines it for chat templates: Python's `json.dumps`
//! (`ensure_ascii=False`, keys in insertion order, `", "`/`": "` separators), not MiniJinja's
//! HTML-safe compact JSON, so that tool and argument JSON in prompts matches transformers byte for byte.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// Deepest nesting `tojson` serializes before giving up (hostile or cyclic values).
const MAX_DEPTH: usize = 128;

/// How to lay out JSON, as `json.dumps`' keyword arguments say.
struct DumpOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `value | tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub(crate) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(n)) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap_or_default().to_string(), b.as_str().unwrap_or_default().to_string())
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings (item separator, key separator)",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = DumpOptions {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    dump(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

/// Appends `value` as JSON at nesting `level`.
fn dump(value: &Value, opts: &DumpOptions, level: usize, out: &mut String) -> Result<(), Error> {
    if level > MAX_DEPTH {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply"));
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => write!(out, "{value}").expect("writing to a String"),
        ValueKind::Number => {
            let f = f64::try_from(value.clone())?;
            out.push_str(&py_float_repr(f));
        }
        ValueKind::String => dump_str(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Bytes => {
            dump_str(&String::from_utf8_lossy(value.as_bytes().unwrap_or_default()), opts.ensure_ascii, out)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            dump_container(out, opts, level, '[', ']', &items, |item, out| dump(item, opts, level + 1, out))?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            dump_container(out, opts, level, '{', '}', &entries, |(k, v), out| {
                dump_str(k, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                dump(v, opts, level + 1, out)
            })?;
        }
        ValueKind::Plain => dump_str(&value.to_string(), opts.ensure_ascii, out),
        ValueKind::Invalid => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: invalid value {value}")))
        }
        // ValueKind is non-exhaustive.
        _ => dump_str(&value.to_string(), opts.ensure_ascii, out),
    }
    Ok(())
}

/// Writes `open items close` with Python's layout: inline, or one item per indented line.
fn dump_container<T>(
    out: &mut String,
    opts: &DumpOptions,
    level: usize,
    open: char,
    close: char,
    items: &[T],
    mut each: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        if let Some(ind) = &opts.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level + 1));
        }
        each(item, out)?;
    }
    if let Some(ind) = &opts.indent {
        out.push('\n');
        out.push_str(&ind.repeat(level));
    }
    out.push(close);
    Ok(())
}

/// A map key as Python's `json.dumps` converts it (strings as is, numbers, booleans, None).
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(py_float_repr(f64::try_from(key.clone())?)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::None | ValueKind::Undefined => Ok("null".to_string()),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be strings, numbers, booleans or none, not {}", key.kind()),
        )),
    }
}

/// A JSON string literal as Python writes it: `"`, `\` and control characters escaped
/// (`\n`-style where JSON has a short form, else `\u00xx`), non-ASCII escaped as `\uxxxx`
/// (UTF-16) only with `ensure_ascii`.
fn dump_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).expect("writing to a String"),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("writing to a String");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `repr(float)` in Python: the shortest round-tripping digits, positional for decimal
/// exponents in [-4, 16), else `d.ddde+XX`; `NaN`, `Infinity`, `-Infinity` as `json.dumps` writes them.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Rust's `{:e}` prints the shortest round-tripping digits: "-1.5e-7", "1e16", "0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() > int_len {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            } else {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()).expect("writing to a String");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, ctx: Value) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(template, ctx).unwrap()
    }

    #[test]
    fn floats_like_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e300, "1e+300"),
            (f64::INFINITY, "Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn dumps_like_python() {
        // Keys deliberately unsorted: insertion order must survive.
        let v: Value = [
            ("name", Value::from("get_weather")),
            ("b", Value::from(vec![Value::from(1), Value::from(2.5), Value::from(true), Value::from(())])),
            ("q", Value::from("<tag> \"é\"\n\u{1}")),
            ("empty", Value::from_iter(Vec::<(&str, Value)>::new())),
            ("e2", Value::from(Vec::<Value>::new())),
        ]
        .into_iter()
        .collect();
        let ctx = minijinja::context! { v };
        // Insertion order, Python separators, no HTML escaping, non-ASCII kept.
        assert_eq!(
            render("{{ v | tojson }}", ctx.clone()),
            r#"{"name": "get_weather", "b": [1, 2.5, true, null], "q": "<tag> \"é\"\n\u0001", "empty": {}, "e2": []}"#
        );
        assert_eq!(
            render("{{ v.b | tojson(indent=2) }}", ctx.clone()),
            "[\n  1,\n  2.5,\n  true,\n  null\n]"
        );
        assert_eq!(
            render("{{ {'x': {'y': 1}} | tojson(indent=2, sort_keys=true) }}", ctx.clone()),
            "{\n  \"x\": {\n    \"y\": 1\n  }\n}"
        );
        assert_eq!(render("{{ 'é🙂' | tojson(ensure_ascii=true) }}", ctx.clone()), r#""\u00e9\ud83d\ude42""#);
        assert_eq!(render("{{ [1, 2] | tojson(separators=[',', ':']) }}", ctx), "[1,2]");
    }
}
