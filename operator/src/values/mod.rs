//! The values model: layered Helm values in IstioOperator shape, merged in chart order, with
//! unknown keys refused by name (and a suggestion) instead of being silently ignored.

use crate::json::type_name;
use serde_json::{Map, Value};

/// Deep-merges `overlay` into `base`: maps merge key by key, anything else (lists included)
/// replaces. A `null` in the overlay removes the key, as with Helm.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                    continue;
                }
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Merges `overlay` into `base` and reports the first leaf both set to different values
/// (as a dotted path). Used to keep split defaults files from contradicting each other.
pub fn merge_disjoint(base: &mut Value, overlay: Value) -> Option<String> {
    fn walk(base: &mut Value, overlay: Value, path: &str) -> Option<String> {
        match (base, overlay) {
            (Value::Object(b), Value::Object(o)) => {
                for (k, v) in o {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match b.get_mut(&k) {
                        Some(slot) => {
                            if let Some(c) = walk(slot, v, &p) {
                                return Some(c);
                            }
                        }
                        None => {
                            b.insert(k, v);
                        }
                    }
                }
                None
            }
            (b, o) if *b == o => None,
            (_, _) => Some(path.to_string()),
        }
    }
    walk(base, overlay, "")
}

/// A values key the bundle does not know, or a value of the wrong type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValuesError {
    #[error("{path}: unknown key for Istio {minor}{}", suggestion.as_ref().map(|s| format!("; did you mean {s:?}?")).unwrap_or_default())]
    UnknownKey {
        path: String,
        minor: String,
        suggestion: Option<String>,
    },
    #[error("{path}: expected {expected}, found {found}")]
    WrongType {
        path: String,
        expected: &'static str,
        found: String,
    },
}

/// Paths below which any key is accepted: the mesh config has its own (large, versioned)
/// schema that istiod validates.
const FREE_FORM: &[&str] = &["values.meshConfig"];

/// Checks user `values` against the bundle's defaults: every key must exist there, except below
/// a map whose default is empty (free-form maps such as `pilot.env` or `podAnnotations`) or a
/// key whose default is `null` (anything goes). Scalars must keep their type, with the lenient
/// conversions Helm users rely on (numbers and booleans given as strings are accepted where the
/// default is a string, and quantities may be numbers or strings).
pub fn check_known(
    user: &Value,
    defaults: &Value,
    path: &str,
    minor: &str,
) -> Result<(), ValuesError> {
    match (user, defaults) {
        (_, Value::Null) | (Value::Null, _) => Ok(()),
        (Value::Object(u), Value::Object(d)) => {
            if d.is_empty() || FREE_FORM.contains(&path) {
                return Ok(());
            }
            for (k, v) in u {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match d.get(k) {
                    Some(dv) => check_known(v, dv, &p, minor)?,
                    None => {
                        return Err(ValuesError::UnknownKey {
                            path: p,
                            minor: minor.to_string(),
                            suggestion: suggest(k, d),
                        });
                    }
                }
            }
            Ok(())
        }
        (Value::Object(_), d)
        | (Value::Array(_), d @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => {
            Err(ValuesError::WrongType {
                path: path.to_string(),
                expected: type_name(d),
                found: type_name(user).to_string(),
            })
        }
        (
            u @ (Value::Bool(_) | Value::Number(_) | Value::String(_)),
            Value::Object(_) | Value::Array(_),
        ) => Err(ValuesError::WrongType {
            path: path.to_string(),
            expected: type_name(defaults),
            found: describe(u),
        }),
        (Value::Array(_), Value::Array(_)) => Ok(()),
        (Value::Array(_), Value::Object(_)) => Err(ValuesError::WrongType {
            path: path.to_string(),
            expected: "a map",
            found: "a list".into(),
        }),
        (Value::String(s), Value::Bool(_)) if s != "true" && s != "false" => {
            Err(ValuesError::WrongType {
                path: path.to_string(),
                expected: "a boolean",
                found: describe(user),
            })
        }
        (Value::Bool(_), Value::Number(_)) => Err(ValuesError::WrongType {
            path: path.to_string(),
            expected: "a number",
            found: describe(user),
        }),
        _ => Ok(()),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        other => type_name(other).to_string(),
    }
}

fn suggest(key: &str, known: &Map<String, Value>) -> Option<String> {
    known
        .keys()
        .map(|k| {
            (
                strsim::damerau_levenshtein(&key.to_lowercase(), &k.to_lowercase()),
                k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.clone())
}

/// Sets `path` (dots; `[n]` indexes lists) in `root` to `value`, creating maps on the way,
/// as istioctl's `--set` does.
pub fn set_path(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let segments = split_path(path)?;
    let mut cur = root;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match seg {
            Segment::Key(k) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                let Value::Object(map) = cur else {
                    return Err(format!("{path}: {k} is not in a map"));
                };
                if last {
                    map.insert(k.clone(), value);
                    return Ok(());
                }
                cur = map.entry(k.clone()).or_insert(Value::Null);
            }
            Segment::Index(n) => {
                let list = cur
                    .as_array_mut()
                    .ok_or_else(|| format!("{path}: [{n}] indexes something that is not a list"))?;
                let len = list.len();
                if *n == len {
                    list.push(Value::Null);
                }
                let slot = list.get_mut(*n).ok_or_else(|| {
                    format!("{path}: index {n} is past the end of a list of {len}")
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                cur = slot;
            }
        }
    }
    Ok(())
}

enum Segment {
    Key(String),
    Index(usize),
}

fn split_path(path: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        } else if rest.is_empty() {
            return Err(format!("{path:?}: empty path segment"));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped
                .find(']')
                .ok_or_else(|| format!("{path:?}: unclosed '['"))?;
            let n = stripped[..end]
                .parse::<usize>()
                .map_err(|_| format!("{path:?}: [{}] is not a list index", &stripped[..end]))?;
            out.push(Segment::Index(n));
            rest = &stripped[end + 1..];
        }
    }
    Ok(out)
}

/// Parses the value of `--set k=v` like istioctl: booleans, numbers and YAML flow
/// collections are typed, anything else is a string.
pub fn parse_set_value(raw: &str) -> Value {
    match raw {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" => return Value::Null,
        _ => {}
    }
    if let Ok(i) = raw.parse::<i64>() {
        return Value::from(i);
    }
    if (raw.starts_with('{') || raw.starts_with('['))
        && let Ok(v) = serde_saphyr::from_str::<Value>(raw)
    {
        return v;
    }
    Value::String(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_replaces_lists_and_removes_nulls() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": 1});
        merge(&mut base, json!({"a": {"c": [3]}, "d": null}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3]}}));
    }

    #[test]
    fn disjoint_merge_names_the_conflict() {
        let mut base = json!({"global": {"hub": "x"}});
        assert_eq!(
            merge_disjoint(&mut base, json!({"global": {"tag": "1"}})),
            None
        );
        assert_eq!(
            merge_disjoint(&mut base, json!({"global": {"hub": "y"}})),
            Some("global.hub".into())
        );
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let defaults = json!({"pilot": {"autoscaleEnabled": true, "env": {}}});
        let err = check_known(
            &json!({"pilot": {"autoscaleEnabeld": false}}),
            &defaults,
            "values",
            "1.24",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "values.pilot.autoscaleEnabeld: unknown key for Istio 1.24; did you mean \"autoscaleEnabled\"?"
        );
        assert!(
            check_known(
                &json!({"pilot": {"env": {"ANY": "x"}}}),
                &defaults,
                "values",
                "1.24"
            )
            .is_ok()
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let defaults =
            json!({"pilot": {"autoscaleEnabled": true, "resources": {"requests": {"cpu": "1"}}}});
        let err = check_known(
            &json!({"pilot": {"autoscaleEnabled": "yes"}}),
            &defaults,
            "values",
            "1.24",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "values.pilot.autoscaleEnabled: expected a boolean, found the string \"yes\""
        );
        let err = check_known(
            &json!({"pilot": {"resources": "big"}}),
            &defaults,
            "values",
            "1.24",
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected a map"), "{err}");
    }

    #[test]
    fn set_path_creates_maps_and_indexes_lists() {
        let mut v = json!({"components": {"ingressGateways": [{"name": "a"}]}});
        set_path(&mut v, "values.global.hub", json!("quay.io/x")).unwrap();
        set_path(
            &mut v,
            "components.ingressGateways[0].enabled",
            json!(false),
        )
        .unwrap();
        assert_eq!(v["values"]["global"]["hub"], "quay.io/x");
        assert_eq!(v["components"]["ingressGateways"][0]["enabled"], false);
        assert!(set_path(&mut v, "components.ingressGateways[5].enabled", json!(1)).is_err());
    }

    #[test]
    fn set_values_are_typed_like_istioctl() {
        assert_eq!(parse_set_value("true"), json!(true));
        assert_eq!(parse_set_value("3"), json!(3));
        assert_eq!(parse_set_value("1.24"), json!("1.24"));
        assert_eq!(parse_set_value("[a, b]"), json!(["a", "b"]));
    }
}
