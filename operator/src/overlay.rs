//! IstioOperator-style overlays: patches by path on rendered objects.
//!
//! Path syntax: dot-separated keys; `[n]` indexes a list; `[key:value]` selects the list item
//! whose `key` equals `value` (e.g. `spec.template.spec.containers.[name:discovery].args[0]`).
//! A patch with a value sets the path (creating maps); without one it removes the path.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
    Select { key: String, value: String },
}

/// Parses an overlay path; the error says what is wrong with it.
pub fn parse_path(path: &str) -> Result<Vec<PathSegment>, String> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    let mut key = String::new();
    let flush = |key: &mut String, out: &mut Vec<PathSegment>| {
        if !key.is_empty() {
            out.push(PathSegment::Key(std::mem::take(key)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => flush(&mut key, &mut out),
            '[' => {
                flush(&mut key, &mut out);
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(ch) => inner.push(ch),
                        None => return Err(format!("path {path:?} has an unclosed '['")),
                    }
                }
                if let Some((k, v)) = inner.split_once(':') {
                    if k.is_empty() {
                        return Err(format!(
                            "path {path:?}: [{inner}] needs a field name before ':'"
                        ));
                    }
                    out.push(PathSegment::Select {
                        key: k.trim().into(),
                        value: v.trim().into(),
                    });
                } else {
                    let n = inner.trim().parse::<usize>().map_err(|_| {
                        format!("path {path:?}: [{inner}] is neither an index nor [key:value]")
                    })?;
                    out.push(PathSegment::Index(n));
                }
            }
            _ => key.push(c),
        }
    }
    flush(&mut key, &mut out);
    if out.is_empty() {
        return Err("path is empty".into());
    }
    Ok(out)
}

fn matches(item: &Value, key: &str, value: &str) -> bool {
    match item.get(key) {
        Some(Value::String(s)) => s == value,
        Some(other) => *other == value,
        None => false,
    }
}

/// Applies one patch. Setting creates missing maps; a missing list item is an error that names
/// the segment.
pub fn apply_patch(obj: &mut Value, path: &str, value: Option<&Value>) -> Result<(), String> {
    let segments = parse_path(path)?;
    let (last, parents) = segments.split_last().ok_or_else(|| {
        format!("path {path:?}: empty; expected a dotted path such as spec.replicas")
    })?;
    let mut cur = obj;
    for seg in parents {
        cur = match seg {
            PathSegment::Key(k) => {
                if cur.is_null() {
                    *cur = Value::Object(Map::new());
                }
                let map = cur
                    .as_object_mut()
                    .ok_or_else(|| format!("path {path:?}: {k:?} is not in a map"))?;
                if value.is_none() && !map.contains_key(k) {
                    return Ok(());
                }
                map.entry(k.clone()).or_insert(Value::Null)
            }
            PathSegment::Index(n) => {
                let len = cur.as_array().map(Vec::len).unwrap_or(0);
                cur.as_array_mut()
                    .and_then(|l| l.get_mut(*n))
                    .ok_or_else(|| format!("path {path:?}: no item [{n}] (the list has {len})"))?
            }
            PathSegment::Select { key, value: want } => cur
                .as_array_mut()
                .and_then(|l| l.iter_mut().find(|i| matches(i, key, want)))
                .ok_or_else(|| format!("path {path:?}: no list item with {key}={want}"))?,
        };
    }
    match (last, value) {
        (PathSegment::Key(k), Some(v)) => {
            if cur.is_null() {
                *cur = Value::Object(Map::new());
            }
            cur.as_object_mut()
                .ok_or_else(|| format!("path {path:?}: {k:?} is not in a map"))?
                .insert(k.clone(), v.clone());
        }
        (PathSegment::Key(k), None) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(k);
            }
        }
        (PathSegment::Index(n), v) => {
            let list = cur.as_array_mut().ok_or_else(|| {
                format!("path {path:?}: [{n}] indexes something that is not a list")
            })?;
            match v {
                Some(v) if *n < list.len() => {
                    if let Some(slot) = list.get_mut(*n) {
                        *slot = v.clone();
                    }
                }
                Some(v) if *n == list.len() => list.push(v.clone()),
                Some(_) => {
                    return Err(format!(
                        "path {path:?}: no item [{n}] (the list has {})",
                        list.len()
                    ));
                }
                None if *n < list.len() => {
                    list.remove(*n);
                }
                None => {}
            }
        }
        (PathSegment::Select { key, value: want }, v) => {
            let list = cur.as_array_mut().ok_or_else(|| {
                format!("path {path:?}: [{key}:{want}] selects in something that is not a list")
            })?;
            let pos = list.iter().position(|i| matches(i, key, want));
            match (pos, v) {
                (Some(i), Some(v)) => {
                    if let Some(slot) = list.get_mut(i) {
                        *slot = v.clone();
                    }
                }
                (None, Some(v)) => list.push(v.clone()),
                (Some(i), None) => {
                    list.remove(i);
                }
                (None, None) => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_list_items_by_field() {
        let mut d = json!({"spec": {"containers": [{"name": "a", "args": ["x"]}, {"name": "b"}]}});
        apply_patch(
            &mut d,
            "spec.containers.[name:a].args[0]",
            Some(&json!("y")),
        )
        .unwrap();
        apply_patch(
            &mut d,
            "spec.containers.[name:b].image",
            Some(&json!("img")),
        )
        .unwrap();
        assert_eq!(d["spec"]["containers"][0]["args"][0], "y");
        assert_eq!(d["spec"]["containers"][1]["image"], "img");
    }

    #[test]
    fn removes_without_value() {
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "l": [1, 2]});
        apply_patch(&mut d, "metadata.labels.a", None).unwrap();
        apply_patch(&mut d, "l[0]", None).unwrap();
        assert_eq!(d, json!({"metadata": {"labels": {"b": "2"}}, "l": [2]}));
    }

    #[test]
    fn bad_paths_are_explained() {
        assert!(parse_path("a.[oops").unwrap_err().contains("unclosed"));
        assert!(parse_path("a[x]").unwrap_err().contains("neither an index"));
        let mut d = json!({"l": []});
        assert!(
            apply_patch(&mut d, "l.[name:z].v", Some(&json!(1)))
                .unwrap_err()
                .contains("name=z")
        );
    }
}
