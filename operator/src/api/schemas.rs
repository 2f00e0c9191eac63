//! Hand-made schema pieces for fields that are free-form in Rust but whose types the API server
//! can still check at admission: the top-level fields of `meshConfig` and the quantities of
//! `resources`. What needs a bundle (unknown mesh keys, nested mesh fields, the release's own
//! MeshConfig) is checked by `crate::validate` and reported in `Stalled`.

use serde_json::{Map, Value, json};

/// The quantity pattern of the API server's `resource.Quantity` (numbers are quantities too).
const QUANTITY_PATTERN: &str =
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$";

/// A schema from a `json!` object (a literal object: the other arm cannot happen, and would
/// give the schema that allows anything rather than a panic).
fn object_schema(v: Value) -> schemars::Schema {
    match v {
        Value::Object(m) => m.into(),
        _ => schemars::Schema::default(),
    }
}

fn quantity() -> Value {
    json!({
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": true
    })
}

/// `resources`: a Kubernetes `ResourceRequirements` with its quantities typed.
pub(crate) fn resources(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let v = json!({
        "type": "object",
        "properties": {
            "requests": {"type": "object", "additionalProperties": quantity()},
            "limits": {"type": "object", "additionalProperties": quantity()},
            "claims": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        }
    });
    object_schema(v)
}

/// `meshConfig`: free-form, with the top-level fields that every bundled release types the same
/// way given their JSON type (so `accessLogFile: 42` is refused by `kubectl apply`).
pub(crate) fn mesh_config(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // A schema that does not parse is left out here (the CRD is only less strict); the `crd`
    // command refuses to run on a broken bundle, and validation refuses installs of it.
    let schemas: Vec<_> = crate::bundle::bundles()
        .iter()
        .filter_map(|b| crate::validate::meshconfig::schema(b).ok())
        .collect();
    let mut props = Map::new();
    if let Some((first, rest)) = schemas.split_first() {
        for (name, ty) in first.top_level_fields() {
            if rest
                .iter()
                .all(|s| s.top_level_fields().any(|(n, t)| n == name && t == ty))
                && let Some(p) = property(first, ty)
            {
                props.insert(name.clone(), p);
            }
        }
    }
    let v = json!({
        "type": "object",
        "properties": props,
        "x-kubernetes-preserve-unknown-fields": true
    });
    object_schema(v)
}

/// The structural schema of one MeshConfig field: scalars typed, messages and maps as objects
/// whose content `validate` checks.
fn property(s: &crate::validate::meshconfig::MeshSchema, ty: &str) -> Option<Value> {
    if let Some(item) = ty.strip_prefix("[]") {
        let items = property(s, item)?;
        return Some(json!({"type": "array", "items": items}));
    }
    if ty.starts_with("{}") {
        return Some(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    }
    Some(match ty {
        "string" | "duration" | "bytes" | "timestamp" => json!({"type": "string"}),
        "bool" => json!({"type": "boolean"}),
        // jsonpb takes integers and enums as numbers or strings.
        "int32" | "uint32" | "int64" | "uint64" => json!({"x-kubernetes-int-or-string": true}),
        "float" | "double" => return None,
        "value" => return None,
        "list" => json!({"type": "array", "items": {"x-kubernetes-preserve-unknown-fields": true}}),
        _ if s.is_enum(ty) => json!({"x-kubernetes-int-or-string": true}),
        _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    })
}
