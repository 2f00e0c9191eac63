//! A fast reader for the YAML our own templates write: block mappings and sequences, flow
//! collections on one line, plain and quoted scalars, `|` / `|-` literals and comments. Plain
//! scalars resolve exactly as yaml-rust2 resolves them (YAML 1.2 core schema), because it is the
//! same function that resolves them.
//!
//! Anything else (anchors, tags, multi-line plain or quoted scalars, folded scalars, duplicate
//! keys, tabs, explicit keys, ...) is [`Unsupported`]: the caller then hands the document to
//! yaml-rust2, which either reads it or reports the error. So this reader never has to be
//! complete, only right about what it accepts; a test holds it against yaml-rust2 on every
//! document every bundled release renders.
//!
//! Why: a cold render spent most of its time in the general YAML parser (about 40 µs per KB of
//! template output); this reader takes a few µs per KB.

use serde_json::{Map, Value};
use yaml_rust2::Yaml;

/// The text uses a construct this reader leaves to the full parser.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unsupported;

type Parsed<T> = Result<T, Unsupported>;

pub(super) fn parse(doc: &str) -> Parsed<Value> {
    if doc.contains('\r') || doc.starts_with('\u{feff}') {
        return Err(Unsupported);
    }
    let mut reader = Reader {
        lines: doc
            .lines()
            .map(|raw| {
                let text = raw.trim_start_matches(' ');
                Line {
                    indent: raw.len() - text.len(),
                    text: text.trim_end(),
                    raw,
                }
            })
            .collect(),
        pos: 0,
    };
    let Some((indent, text)) = reader.peek_indent_and_text() else {
        return Ok(Value::Null);
    };
    if text.starts_with("---") || text.starts_with("...") {
        return Err(Unsupported);
    }
    let value = reader.block(indent)?;
    match reader.peek() {
        None => Ok(value),
        Some(_) => Err(Unsupported),
    }
}

struct Line<'a> {
    /// Leading spaces.
    indent: usize,
    /// After the indentation, without trailing whitespace.
    text: &'a str,
    /// The whole line (block literals read it as written).
    raw: &'a str,
}

struct Reader<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next line that holds content, skipping blank and comment lines.
    fn peek(&mut self) -> Option<&Line<'a>> {
        while let Some(line) = self.lines.get(self.pos) {
            if line.text.is_empty() || line.text.starts_with('#') {
                self.pos += 1;
            } else {
                return self.lines.get(self.pos);
            }
        }
        None
    }

    fn peek_indent_and_text(&mut self) -> Option<(usize, &'a str)> {
        self.peek().map(|l| (l.indent, l.text))
    }

    /// A block node whose first line (the current one) is indented by `indent`.
    fn block(&mut self, indent: usize) -> Parsed<Value> {
        match self.peek_indent_and_text() {
            Some((_, text)) if is_sequence_item(text) => self.sequence(indent),
            Some(_) => self.mapping(indent),
            None => Err(Unsupported),
        }
    }

    /// The value of a key or item that had nothing after its indicator: a block on the
    /// following lines, or null.
    fn nested(&mut self, parent: usize, in_mapping: bool) -> Parsed<Value> {
        match self.peek_indent_and_text() {
            Some((indent, _)) if indent > parent => self.block(indent),
            // A sequence may sit at its key's own indentation.
            Some((indent, text)) if in_mapping && indent == parent && is_sequence_item(text) => {
                self.sequence(indent)
            }
            _ => Ok(Value::Null),
        }
    }

    fn sequence(&mut self, indent: usize) -> Parsed<Value> {
        let mut items = Vec::new();
        while let Some((line_indent, text)) = self.peek_indent_and_text() {
            if line_indent != indent || !is_sequence_item(text) {
                if line_indent > indent {
                    return Err(Unsupported);
                }
                break;
            }
            if text.contains('\t') {
                return Err(Unsupported);
            }
            let rest = text[1..].trim_start_matches(' ');
            if rest.is_empty() || rest.starts_with('#') {
                self.pos += 1;
                items.push(self.nested(indent, false)?);
            } else if is_sequence_item(rest) {
                return Err(Unsupported);
            } else if split_key(rest)?.is_some() {
                // `- key: value`: a mapping that starts after the dash; its keys line up there.
                let column = indent + (text.len() - rest.len());
                let line = self.lines.get_mut(self.pos).ok_or(Unsupported)?;
                line.indent = column;
                line.text = rest;
                items.push(self.mapping(column)?);
            } else {
                self.pos += 1;
                items.push(self.inline(rest, indent)?);
            }
        }
        Ok(Value::Array(items))
    }

    fn mapping(&mut self, indent: usize) -> Parsed<Value> {
        let mut map = Map::new();
        while let Some((line_indent, text)) = self.peek_indent_and_text() {
            if line_indent < indent {
                break;
            }
            if line_indent > indent || is_sequence_item(text) || text.contains('\t') {
                return Err(Unsupported);
            }
            let (key, rest) = split_key(text)?.ok_or(Unsupported)?;
            self.pos += 1;
            let value = if rest.is_empty() || rest.starts_with('#') {
                self.nested(indent, true)?
            } else {
                self.inline(rest, indent)?
            };
            if map.insert(key, value).is_some() {
                return Err(Unsupported);
            }
        }
        Ok(Value::Object(map))
    }

    /// A value that starts on its key's or dash's line (already consumed). `parent` is the
    /// indentation of that mapping or sequence.
    fn inline(&mut self, text: &str, parent: usize) -> Parsed<Value> {
        let value = match text.as_bytes().first().ok_or(Unsupported)? {
            b'|' | b'>' => return self.literal(text, parent),
            b'[' | b'{' | b'"' | b'\'' => {
                let mut at = 0;
                let value = flow_node(text, &mut at)?;
                end_of_line(&text[at..])?;
                value
            }
            _ => plain(block_plain(text)?)?,
        };
        // A deeper line after a one-line value would be a continuation (multi-line scalar).
        match self.peek_indent_and_text() {
            Some((indent, _)) if indent > parent => Err(Unsupported),
            _ => Ok(value),
        }
    }

    /// `|` / `|-` (the lines below, indented past `parent`, as written) or `>` / `>-` (the same
    /// lines joined by spaces; only without blank or more-indented lines, where folding is
    /// that simple).
    fn literal(&mut self, header: &str, parent: usize) -> Parsed<Value> {
        let (folded, strip) = match header
            .split_once(" #")
            .map_or(header, |(h, _)| h)
            .trim_end()
        {
            "|" => (false, false),
            "|-" => (false, true),
            ">" => (true, false),
            ">-" => (true, true),
            _ => return Err(Unsupported),
        };
        let mut content = String::new();
        let mut indent = None;
        let mut pending_blank = 0;
        while let Some(line) = self.lines.get(self.pos) {
            let spaces = line.raw.len() - line.raw.trim_start_matches(' ').len();
            if spaces == line.raw.len() {
                // A blank line inside the block. Leading ones, and ones with more spaces than
                // the block's indentation (they would carry content), are left to the full parser.
                match indent {
                    Some(i) if spaces <= i => {}
                    _ => return Err(Unsupported),
                }
                pending_blank += 1;
                self.pos += 1;
                continue;
            }
            let block_indent = *indent.get_or_insert(spaces);
            if block_indent <= parent {
                return Err(Unsupported);
            }
            if spaces < block_indent {
                break;
            }
            if folded && (pending_blank > 0 || spaces > block_indent) {
                return Err(Unsupported);
            }
            for _ in 0..pending_blank {
                content.push('\n');
            }
            pending_blank = 0;
            content.push_str(&line.raw[block_indent..]);
            content.push(if folded { ' ' } else { '\n' });
            self.pos += 1;
        }
        if indent.is_none() {
            return Err(Unsupported);
        }
        content.pop();
        if !strip {
            content.push('\n');
        }
        Ok(Value::String(content))
    }
}

fn is_sequence_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// After a value on a line: nothing, or a comment.
fn end_of_line(rest: &str) -> Parsed<()> {
    let trimmed = rest.trim_start_matches(' ');
    if trimmed.is_empty() || (trimmed.len() < rest.len() && trimmed.starts_with('#')) {
        Ok(())
    } else {
        Err(Unsupported)
    }
}

/// `key: rest` → the key and what follows the colon (trimmed). `None` when the line holds no
/// mapping key.
fn split_key(text: &str) -> Parsed<Option<(String, &str)>> {
    let bytes = text.as_bytes();
    let (key, after) = match bytes.first().ok_or(Unsupported)? {
        b'"' | b'\'' => {
            let mut at = 0;
            let key = quoted(text, &mut at)?;
            let rest = text[at..].trim_start_matches(' ');
            match rest.strip_prefix(':') {
                Some(after) if after.is_empty() || after.starts_with(' ') => (key, after),
                Some(_) => return Err(Unsupported),
                None => return Ok(None),
            }
        }
        b'[' | b'{' | b'|' | b'>' | b'!' | b'&' | b'*' | b'%' | b'@' | b'`' | b'?' | b':'
        | b',' | b']' | b'}' | b'#' | b'-' => return Ok(None),
        _ => {
            let Some(colon) = find_value_colon(bytes) else {
                return Ok(None);
            };
            let key = text[..colon].trim_end_matches(' ');
            if key.contains(" #")
                || key
                    .bytes()
                    .any(|b| matches!(b, b'[' | b']' | b'{' | b'}' | b',' | b'\t'))
            {
                return Err(Unsupported);
            }
            (plain_key(key)?, &text[colon + 1..])
        }
    };
    Ok(Some((key, after.trim_start_matches(' '))))
}

/// The first `:` followed by a space or the end of the line.
fn find_value_colon(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = bytes.get(from..)?.iter().position(|&b| b == b':') {
        let at = from + i;
        match bytes.get(at + 1) {
            None | Some(b' ') => return Some(at),
            _ => from = at + 1,
        }
    }
    None
}

/// A plain scalar in block context, without a trailing comment.
fn block_plain(text: &str) -> Parsed<&str> {
    let value = text.split_once(" #").map_or(text, |(v, _)| v).trim_end();
    let first = value.as_bytes().first().copied().ok_or(Unsupported)?;
    if matches!(
        first,
        b'!' | b'&' | b'*' | b'%' | b'@' | b'`' | b'?' | b':' | b',' | b']' | b'}' | b'#' | b'>'
    ) || value == "-"
        || value.starts_with("- ")
        || value.ends_with(':')
        || value.contains(": ")
        || value.contains('\t')
    {
        return Err(Unsupported);
    }
    Ok(value)
}

/// A plain mapping key, resolved as yaml-rust2 resolves it and written as the renderer writes
/// non-string keys.
fn plain_key(text: &str) -> Parsed<String> {
    match Yaml::from_str(text) {
        Yaml::String(s) => Ok(s),
        Yaml::Integer(i) => Ok(i.to_string()),
        Yaml::Boolean(b) => Ok(b.to_string()),
        Yaml::Real(r) => Ok(r),
        _ => Err(Unsupported),
    }
}

/// Resolves a plain scalar exactly as yaml-rust2 does.
fn plain(text: &str) -> Parsed<Value> {
    Ok(match Yaml::from_str(text) {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::String(s) => Value::String(s),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or(Unsupported)?,
        _ => return Err(Unsupported),
    })
}

/// A node in flow context (or a quoted scalar) starting at `at`; `at` ends past it.
fn flow_node(text: &str, at: &mut usize) -> Parsed<Value> {
    let bytes = text.as_bytes();
    skip_spaces(bytes, at);
    match bytes.get(*at).ok_or(Unsupported)? {
        b'"' | b'\'' => quoted(text, at).map(Value::String),
        b'[' => {
            *at += 1;
            let mut items = Vec::new();
            loop {
                skip_spaces(bytes, at);
                if bytes.get(*at) == Some(&b']') {
                    *at += 1;
                    return Ok(Value::Array(items));
                }
                items.push(flow_node(text, at)?);
                skip_spaces(bytes, at);
                match bytes.get(*at) {
                    Some(b',') => *at += 1,
                    Some(b']') => {}
                    _ => return Err(Unsupported),
                }
            }
        }
        b'{' => {
            *at += 1;
            let mut map = Map::new();
            loop {
                skip_spaces(bytes, at);
                if bytes.get(*at) == Some(&b'}') {
                    *at += 1;
                    return Ok(Value::Object(map));
                }
                let key = match bytes.get(*at) {
                    Some(b'"' | b'\'') => quoted(text, at)?,
                    _ => plain_key(flow_plain(text, at)?)?,
                };
                skip_spaces(bytes, at);
                if bytes.get(*at) != Some(&b':') {
                    return Err(Unsupported);
                }
                *at += 1;
                skip_spaces(bytes, at);
                if matches!(bytes.get(*at), None | Some(b',' | b'}')) {
                    return Err(Unsupported);
                }
                let value = flow_node(text, at)?;
                if map.insert(key, value).is_some() {
                    return Err(Unsupported);
                }
                skip_spaces(bytes, at);
                match bytes.get(*at) {
                    Some(b',') => *at += 1,
                    Some(b'}') => {}
                    _ => return Err(Unsupported),
                }
            }
        }
        _ => plain(flow_plain(text, at)?),
    }
}

/// A plain scalar in flow context: up to a flow indicator, a `:` that separates a value, or a
/// comment (which is left to the full parser).
fn flow_plain<'t>(text: &'t str, at: &mut usize) -> Parsed<&'t str> {
    let bytes = text.as_bytes();
    let start = *at;
    let mut end = start;
    while let Some(&b) = bytes.get(end) {
        match b {
            b',' | b'[' | b']' | b'{' | b'}' => break,
            b':' if matches!(
                bytes.get(end + 1),
                None | Some(b' ' | b',' | b'[' | b']' | b'{' | b'}')
            ) =>
            {
                break;
            }
            b'#' if end > 0 && bytes.get(end - 1) == Some(&b' ') => return Err(Unsupported),
            b'\t' => return Err(Unsupported),
            _ => end += 1,
        }
    }
    let token = text
        .get(start..end)
        .ok_or(Unsupported)?
        .trim_end_matches(' ');
    if token.is_empty()
        || matches!(
            token.as_bytes().first().copied().unwrap_or_default(),
            b'!' | b'&' | b'*' | b'%' | b'@' | b'`' | b'?' | b':' | b'#' | b'|' | b'>'
        )
        || token == "-"
        || token.starts_with("- ")
    {
        return Err(Unsupported);
    }
    *at = start + token.len();
    Ok(token)
}

fn skip_spaces(bytes: &[u8], at: &mut usize) {
    while bytes.get(*at) == Some(&b' ') {
        *at += 1;
    }
}

/// A quoted scalar that closes on its own line; `at` is at the opening quote and ends past the
/// closing one.
fn quoted(text: &str, at: &mut usize) -> Parsed<String> {
    let bytes = text.as_bytes();
    let quote = *bytes.get(*at).ok_or(Unsupported)?;
    let mut out = String::new();
    let mut run = *at + 1;
    let mut i = run;
    loop {
        let b = *bytes.get(i).ok_or(Unsupported)?;
        if b == quote {
            if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                out.push_str(&text[run..=i]);
                i += 2;
                run = i;
                continue;
            }
            out.push_str(&text[run..i]);
            *at = i + 1;
            return Ok(out);
        }
        if b == b'\\' && quote == b'"' {
            out.push_str(&text[run..i]);
            let escape = *bytes.get(i + 1).ok_or(Unsupported)?;
            i += 2;
            match escape {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'0' => out.push('\0'),
                b'u' => {
                    let hex = text.get(i..i + 4).ok_or(Unsupported)?;
                    let code = u32::from_str_radix(hex, 16).map_err(|_| Unsupported)?;
                    out.push(char::from_u32(code).ok_or(Unsupported)?);
                    i += 4;
                }
                _ => return Err(Unsupported),
            }
            run = i;
            continue;
        }
        if b == b'\t' {
            return Err(Unsupported);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What yaml-rust2 (the full parser) makes of `doc`, converted like the renderer converts it.
    fn reference(doc: &str) -> Result<Value, String> {
        super::super::parse_template_yaml(doc)
    }

    fn accepted(doc: &str) -> Value {
        let fast = parse(doc).unwrap_or_else(|_| panic!("unsupported:\n{doc}"));
        assert_eq!(
            Ok(&fast),
            reference(doc).as_ref(),
            "differs from yaml-rust2:\n{doc}"
        );
        fast
    }

    fn refused(doc: &str) {
        assert_eq!(parse(doc), Err(Unsupported), "accepted:\n{doc}");
    }

    #[test]
    fn reads_what_the_templates_write_as_yaml_rust2_does() {
        for doc in [
            "a: 1\nb: two\nc: \"three\"\nd: 'it''s'\ne:\nf: true\ng: 1.5\nh: 0x1F\ni: ~\nj: null\n",
            "# comment\nmetadata:\n  name: x # trailing\n  labels:\n    \"app\": \"istiod\"\n",
            "list:\n- a\n- 2\n-\n  nested: yes\n- name: b\n  value: c\n- {name: d, value: \"e\"}\n",
            "list:\n  - [a, \"b\", 3, {x: y}]\n  - []\n  - {}\nnext: [ 1 , 2, ]\n",
            "env: {\"a\":\"b\",\"c\":[1,2],\"d\":{\"e\":null}}\n",
            "args:\n- --monitoringAddr=:15014\n- \"--log=default:info\"\n- http://x:80/y\n",
            "s: \"esc \\\" \\\\ \\/ \\n \\t \\u003c \\u00e9\"\nt: 'a \"b\" c'\nu: é\n",
            "k: |\n  line 1\n\n    indented\n  last\nnext: 1\n",
            "k: |-\n  no newline\nseq:\n- |\n  item\n- x\n",
            "k: >-\n  !(a &&\n  b)  \nl: >\n  one\n  two\n",
            "numbers: [1, -2, +3, 0o17, 1e3, .5, 1_000, 0777, 12:30]\n",
            "Null: NULL\nTrue: True\n1: one\n2.5: x\n",
            "a:\n  b:\n    c:\n    - d: 1\n      e:\n        f: g\n  h: i\n",
            "key with spaces: value with spaces and # inside\nurl: a#b\n",
            "",
            "# only a comment\n",
        ] {
            accepted(doc);
        }
    }

    #[test]
    fn leaves_other_constructs_to_the_full_parser() {
        for doc in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: b\n  continued\n",
            "a: \"multi\n  line\"\n",
            "a: >\n  folded\n\n  paragraph\n",
            "a: >-\n  folded\n    more indented\n",
            "a: |+\n  keep\n\n",
            "a: 1\na: 2\n",
            "? a\n: b\n",
            "a:\tb\n",
            "- - a\n",
            "a: - b\n",
            "a: b: c\n",
            "a: [b,\n  c]\n",
            "plain scalar\n",
            "a: {b}\n",
            "a: {b: }\n",
            "a: \"\\x41\"\n",
            "a: \"\\ud800\"\n",
            "a: [b #c]\n",
            "a: 1\n b: 2\n",
            "a: 1\r\n",
        ] {
            refused(doc);
        }
    }
}
