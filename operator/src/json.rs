//! Reading untrusted JSON without indexing. `v["a"]` never panics in serde_json (a missing key
//! or a non-map reads as null), but `v["a"] = x` does when `v` is not a map, and the no-panic
//! lint cannot tell the two apart: reads go through [`at`], writes through `get_mut`/`as_object_mut`.

use serde_json::Value;

static NULL: Value = Value::Null;

/// The value at `path` (map keys), or null when any step is missing or not a map.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().try_fold(v, |v, k| v.get(*k)).unwrap_or(&NULL)
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
}
