//! `toyaml`: template values written as block YAML, the way Helm's `toYaml` lays them out (keys
//! sorted, sequences under their key, multi-line strings as `|` literals), for the YAML strings
//! Istio reads from ConfigMaps (mesh config, injector config).
//!
//! Strings are quoted unless they are plain words no YAML reader could take for anything else:
//! istiod reads these with a YAML 1.1 library, where `on`, `yes` or `0777` are not strings.
//! Writing the template values directly (instead of converting them to serde values first and
//! serializing those) keeps the injection templates' 60 KB of text from being copied twice.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

pub(super) fn to_yaml(value: &Value) -> Result<String, Error> {
    let mut out = String::new();
    match value.kind() {
        ValueKind::Map if value.len() != Some(0) => write_map(&mut out, value, 0)?,
        ValueKind::Seq | ValueKind::Iterable if has_items(value)? => write_seq(&mut out, value, 0)?,
        _ => {
            write_scalar(&mut out, value, 0)?;
            out.push('\n');
        }
    }
    Ok(out)
}

/// A non-empty mapping, one `key: value` line (or block) per entry, starting at the line start.
fn write_map(out: &mut String, map: &Value, indent: usize) -> Result<(), Error> {
    let mut keys: Vec<Value> = map.try_iter()?.collect();
    keys.sort();
    for (i, key) in keys.iter().enumerate() {
        // The first key of a mapping inside a sequence item follows its `- `.
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        let key_text = match key.as_str() {
            Some(s) => s.to_string(),
            None => key.to_string(),
        };
        write_string(out, &key_text, indent, false);
        out.push(':');
        let value = map.get_item(key)?;
        write_value(out, &value, indent, true)?;
    }
    Ok(())
}

/// A non-empty sequence, one `- item` per element. Under a key, the dashes line up with it.
fn write_seq(out: &mut String, seq: &Value, indent: usize) -> Result<(), Error> {
    for (i, item) in seq.try_iter()?.enumerate() {
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push('-');
        write_value(out, &item, indent + 2, false)?;
    }
    Ok(())
}

/// What follows a key's `:` or an item's `-`.
fn write_value(
    out: &mut String,
    value: &Value,
    indent: usize,
    under_key: bool,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Map if value.len() != Some(0) => {
            if under_key {
                out.push('\n');
                write_map(out, value, indent + 2)
            } else {
                out.push(' ');
                write_map(out, value, indent)
            }
        }
        ValueKind::Seq | ValueKind::Iterable if has_items(value)? => {
            if under_key {
                out.push('\n');
                write_seq(out, value, indent)
            } else {
                out.push(' ');
                write_seq(out, value, indent)
            }
        }
        _ => {
            out.push(' ');
            let inner = if under_key { indent + 2 } else { indent };
            write_scalar(out, value, inner)?;
            out.push('\n');
            Ok(())
        }
    }
}

fn write_scalar(out: &mut String, value: &Value, indent: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(f) = f64::try_from(value.clone())
                && !value.is_integer()
                && !f.is_finite()
            {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("toyaml: {f} is not a number YAML readers agree on"),
                ));
            }
            out.push_str(&value.to_string());
        }
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), indent, true),
        ValueKind::Map => out.push_str("{}"),
        ValueKind::Seq | ValueKind::Iterable => out.push_str("[]"),
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("toyaml: cannot write a {other} value"),
            ));
        }
    }
    Ok(())
}

/// A string: plain when it is safe, a `|` literal when it has several lines (values only),
/// double-quoted otherwise. Literal lines sit at `indent`.
fn write_string(out: &mut String, s: &str, indent: usize, may_be_literal: bool) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if may_be_literal && fits_literal(s) {
        let body = s.strip_suffix('\n');
        out.push_str(if body.is_some() { "|" } else { "|-" });
        for line in body.unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                pad(out, indent);
                out.push_str(line);
            }
        }
    } else {
        write_quoted(out, s);
    }
}

/// Words that read as the same string in YAML 1.1 and 1.2: starting with a letter or `/`, made
/// of letters, digits and `._/:-`, not ending in `:` and not a boolean or null of either version.
fn is_plain_safe(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == b'/')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b':' | b'-'))
        && !s.ends_with(':')
        && !s.contains("://")
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        )
}

/// Multi-line text a `|` literal reproduces exactly: ending in at most one line break, no
/// leading space on the first line, no trailing spaces on any line (so no line of spaces only),
/// no control characters but `\n` (nor the characters YAML takes for line breaks or a byte
/// order mark). Whole-slice scans: the injection templates are 60 KB.
fn fits_literal(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.contains(&b'\n')
        && !s.ends_with("\n\n")
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && !s.contains(" \n")
        && bytes.iter().all(|&b| b >= 0x20 && b != 0x7f || b == b'\n')
        && (bytes.is_ascii()
            || !s.chars().any(|c| {
                c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
            }))
}

fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn has_items(seq: &Value) -> Result<bool, Error> {
    Ok(seq.try_iter()?.next().is_some())
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(v: serde_json::Value) -> String {
        to_yaml(&Value::from(minijinja::value::Serde(v))).expect("writes")
    }

    #[test]
    fn lays_out_like_helm_to_yaml() {
        let v = serde_json::json!({
            "b": {"list": ["x", {"k": 1, "j": [true, null]}], "empty": {}, "none": []},
            "a": "multi\nline\n",
            "c": "no newline\nat end",
        });
        assert_eq!(
            yaml(v),
            "a: |\n  multi\n  line\nb:\n  empty: {}\n  list:\n  - x\n  - j:\n    - true\n    - null\n    k: 1\n  none: []\nc: |-\n  no newline\n  at end\n"
        );
    }

    #[test]
    fn quotes_what_a_yaml_reader_could_take_for_something_else() {
        for s in [
            "on", "Yes", "n", "null", "1.24", "0777", "", " x", "a: b", "a #b", "*x", "http://x",
            "key:", "-x", "é",
        ] {
            assert_eq!(
                yaml(serde_json::json!(s)),
                format!("{}\n", serde_json::to_string(s).unwrap()),
                "{s:?}"
            );
        }
        for s in [
            "istiod.istio-system.svc:15012",
            "/dev/stdout",
            "cluster.local",
            "misc:error",
        ] {
            assert_eq!(yaml(serde_json::json!(s)), format!("{s}\n"));
        }
    }

    #[test]
    fn what_it_writes_reads_back_the_same() {
        let v = serde_json::json!({
            "templates": {"t": "{{- if .X }}\n  indented: \"q\"\n\n# not a comment\n{{ end }}\n"},
            "tabs": "a\tb\nc", "trailing": "a\n\n", "lead": " a\nb", "quote": "say \"hi\" \\ now",
            "nested": [[1, 2], [], {"x": [{"y": "z"}]}], "float": 1.5, "neg": -3,
            "spaces": "a\n  \nb", "ctl": "bell\u{7}",
        });
        let text = yaml(v.clone());
        assert_eq!(
            crate::bundle::parse_yaml(&text).expect("valid YAML"),
            v,
            "{text}"
        );
    }
}
