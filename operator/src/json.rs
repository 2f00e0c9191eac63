//! Reading untrusted JSON without indexing. `v["a"]` never panics in serde_json (a missing key
//! or a non-map reads as null), but `v["a"] = x` does when `v` is not a map, and the no-panic
//! lint cannot tell the two apart: reads go through [`at`], writes through [`at_mut`] (or
//! `get_mut`/`as_object_mut`).

use serde_json::{Map, Value};

static NULL: Value = Value::Null;

/// The value at `path` (map keys), or null when any step is missing or not a map.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().try_fold(v, |v, k| v.get(*k)).unwrap_or(&NULL)
}

/// The place at `path`, as `v["a"]["b"]` would make it: a missing key becomes null and a null
/// on the way becomes a map. `Err` names the first step that is something else than a map.
pub fn at_mut<'a>(v: &'a mut Value, path: &[&str]) -> Result<&'a mut Value, String> {
    let mut place = v;
    for (i, key) in path.iter().enumerate() {
        if place.is_null() {
            *place = Value::Object(Map::new());
        }
        let Value::Object(map) = place else {
            let parent = path.get(..i).unwrap_or_default();
            return Err(match parent {
                [] => format!("expected a map, found {}", type_name(place)),
                _ => format!("{} is {}, not a map", parent.join("."), type_name(place)),
            });
        };
        place = map.entry(*key).or_insert(Value::Null);
    }
    Ok(place)
}

/// What kind of JSON value `v` is, for messages ("a list", "null").
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_steps_read_as_null() {
        let v = json!({"metadata": {"labels": {"a/b": "x"}}, "list": [1]});
        assert_eq!(at(&v, &["metadata", "labels", "a/b"]), "x");
        assert!(at(&v, &["metadata", "nope", "a"]).is_null());
        assert!(at(&v, &["list", "a"]).is_null());
        assert_eq!(at(&v, &[]), &v);
    }

    #[test]
    fn places_are_made_like_index_mut_but_a_non_map_is_an_error() {
        let mut v = json!({"spec": {"replicas": 1}, "list": [1]});
        *at_mut(&mut v, &["spec", "template", "spec"]).unwrap() = json!({"a": 1});
        assert_eq!(v["spec"]["template"]["spec"]["a"], 1);
        assert_eq!(
            at_mut(&mut v, &["list", "a"]).unwrap_err(),
            "list is a list, not a map"
        );
        assert_eq!(
            at_mut(&mut json!("s"), &["a"]).unwrap_err(),
            "expected a map, found a string"
        );
        assert_eq!(
            at_mut(&mut v, &[]).unwrap(),
            &json!({"spec": {"replicas": 1, "template": {"spec": {"a": 1}}}, "list": [1]})
        );
    }
}
