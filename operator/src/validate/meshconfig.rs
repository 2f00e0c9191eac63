//! `meshConfig` checked against the MeshConfig fields and types of the bundled release
//! (`charts/<minor>/meshconfig.yaml`, written by `e2e/meshconfig-schema.py` from istio/api's
//! `mesh/v1alpha1/config.proto`), following how istiod decodes the `mesh` key of its ConfigMap
//! (golang/protobuf's legacy jsonpb): field names in JSON (lowerCamel) or proto (snake_case)
//! form; strings and booleans only as such; integers as JSON integers or quoted integers in
//! range; enums by name or number; durations in Go's `time.ParseDuration` syntax (`10s`, `1m30s`);
//! `null` leaves a field unset.
//!
//! Two checks are stricter than istiod, on purpose: an unknown key is refused (istiod ignores it
//! silently, so a typo such as `acessLogFile` would never take effect) and so are two members of
//! one oneof (istiod keeps one of them without a word).
//!
//! Hand-written rather than a protobuf library: the operator carries no protobuf descriptors, and
//! the decoding rules above are a few dozen lines.

use crate::bundle::Bundle;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// One release's MeshConfig schema.
#[derive(Debug, Default, Deserialize)]
pub struct MeshSchema {
    root: String,
    messages: HashMap<String, Message>,
    enums: HashMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct Message {
    /// JSON name → type (see the file header of `meshconfig.yaml`).
    fields: BTreeMap<String, String>,
    #[serde(default)]
    oneofs: Vec<Vec<String>>,
}

/// A refusal: the dotted path below the checked value, and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshError {
    pub path: String,
    pub message: String,
}

/// The schema of a bundle; `Err` names the file when it does not parse.
pub fn schema(bundle: &Bundle) -> Result<&MeshSchema, String> {
    bundle.mesh_schema()
}

impl MeshSchema {
    /// The schema in a bundle's `meshconfig.yaml`, parsed; `Err` says what is wrong with it.
    pub fn parse(v: Value) -> Result<MeshSchema, String> {
        let s: MeshSchema = serde_json::from_value(v).map_err(|e| e.to_string())?;
        if !s.messages.contains_key(&s.root) {
            return Err(format!(
                "root message {:?} is not among its messages",
                s.root
            ));
        }
        Ok(s)
    }

    /// The fields of MeshConfig itself: JSON name and type.
    pub fn top_level_fields(&self) -> impl Iterator<Item = (&String, &String)> {
        self.messages
            .get(&self.root)
            .into_iter()
            .flat_map(|m| m.fields.iter())
    }

    pub fn is_enum(&self, ty: &str) -> bool {
        self.enums.contains_key(ty)
    }

    /// Checks a whole `meshConfig` map.
    pub fn check(&self, v: &Value) -> Result<(), MeshError> {
        self.message(&self.root, v, "")
    }

    fn message(&self, name: &str, v: &Value, path: &str) -> Result<(), MeshError> {
        // A type the schema names but does not describe is a defect of meshconfig.yaml; the
        // field is refused rather than let through unchecked.
        let Some(m) = self.messages.get(name) else {
            return Err(wrong(
                path,
                &format!("a type this release describes ({name})"),
                v,
            ));
        };
        let Value::Object(obj) = v else {
            return Err(wrong(path, &format!("a map ({})", short(name)), v));
        };
        let mut set: Vec<&str> = Vec::new();
        for (k, fv) in obj {
            let p = join(path, k);
            // jsonpb accepts the JSON name and the proto field name.
            let Some((json_name, ty)) = m
                .fields
                .get_key_value(k.as_str())
                .or_else(|| m.fields.get_key_value(camel(k).as_str()))
            else {
                let suggestion = suggest(k, m.fields.keys());
                return Err(MeshError {
                    path: p,
                    message: format!(
                        "unknown field of {}{}",
                        short(name),
                        suggestion
                            .map(|s| format!("; did you mean {s:?}?"))
                            .unwrap_or_default()
                    ),
                });
            };
            if fv.is_null() {
                continue;
            }
            set.push(json_name);
            self.field(ty, fv, &p)?;
        }
        for group in &m.oneofs {
            let both: Vec<&str> = set
                .iter()
                .copied()
                .filter(|f| group.iter().any(|g| g == f))
                .collect();
            if both.len() > 1 {
                return Err(MeshError {
                    path: path.to_string(),
                    message: format!(
                        "{} are alternatives: set only one of them",
                        both.join(" and ")
                    ),
                });
            }
        }
        Ok(())
    }

    fn field(&self, ty: &str, v: &Value, path: &str) -> Result<(), MeshError> {
        if let Some(item) = ty.strip_prefix("[]") {
            let Value::Array(a) = v else {
                return Err(wrong(path, "a list", v));
            };
            for (i, x) in a.iter().enumerate() {
                self.single(item, x, &format!("{path}[{i}]"))?;
            }
            return Ok(());
        }
        if let Some(item) = ty.strip_prefix("{}") {
            let Value::Object(m) = v else {
                return Err(wrong(path, "a map", v));
            };
            for (k, x) in m {
                self.single(item, x, &join(path, k))?;
            }
            return Ok(());
        }
        self.single(ty, v, path)
    }

    fn single(&self, ty: &str, v: &Value, path: &str) -> Result<(), MeshError> {
        let ok = match ty {
            "string" => v.is_string(),
            "bool" => v.is_boolean(),
            // Base64 text.
            "bytes" => v.is_string(),
            "int32" => integer(v).is_some_and(|n| i32::try_from(n).is_ok()),
            "uint32" => integer(v).is_some_and(|n| u32::try_from(n).is_ok()),
            "int64" => integer(v).is_some_and(|n| i64::try_from(n).is_ok()),
            "uint64" => integer(v).is_some_and(|n| u64::try_from(n).is_ok()),
            "float" | "double" => match v {
                Value::Number(_) => true,
                Value::String(s) => {
                    matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity")
                        || s.parse::<f64>().is_ok()
                }
                _ => false,
            },
            "duration" => v.as_str().is_some_and(go_duration),
            "struct" | "empty" => v.is_object(),
            "list" => v.is_array(),
            "value" => true,
            "any" => v.get("@type").is_some_and(Value::is_string),
            "timestamp" => v.is_string(),
            _ => {
                if let Some(values) = self.enums.get(ty) {
                    return match v {
                        Value::String(s) if values.iter().any(|x| x == s) => Ok(()),
                        Value::Number(n) if n.is_i64() => Ok(()),
                        _ => Err(wrong(path, &format!("one of {}", values.join(", ")), v)),
                    };
                }
                return self.message(ty, v, path);
            }
        };
        if ok {
            Ok(())
        } else {
            Err(wrong(path, expected(ty), v))
        }
    }
}

fn expected(ty: &str) -> &'static str {
    match ty {
        "string" => "a string",
        "bool" => "a boolean (true or false)",
        "bytes" => "a base64 string",
        "int32" => "an integer (32-bit)",
        "uint32" => "a non-negative integer (32-bit)",
        "int64" => "an integer",
        "uint64" => "a non-negative integer",
        "float" | "double" => "a number",
        "duration" => "a duration such as 10s, 500ms or 1m30s",
        "struct" | "empty" => "a map",
        "list" => "a list",
        "any" => "a map with an \"@type\"",
        "timestamp" => "an RFC 3339 timestamp",
        _ => "a value",
    }
}

/// An integer as jsonpb reads one: a JSON integer, or the same digits in quotes.
fn integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => s.parse::<i128>().ok(),
        _ => None,
    }
}

/// Go's `time.ParseDuration` syntax: `0`, or a sign and one or more `<decimal><unit>` with units
/// ns, us, µs, μs, ms, s, m, h.
fn go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..digits];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        if !matches!(
            &rest[..unit_len],
            "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h"
        ) {
            return false;
        }
        rest = &rest[unit_len..];
    }
    true
}

/// protoc's default JSON name of a proto field name: `access_log_file` → `accessLogFile`.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn short(full: &str) -> &str {
    full.strip_prefix("istio.mesh.v1alpha1.")
        .or_else(|| full.strip_prefix("istio."))
        .unwrap_or(full)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn wrong(path: &str, expected: &str, found: &Value) -> MeshError {
    let found = match found {
        Value::String(s) => format!("the string {s:?}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a map".to_string(),
        Value::Null => "null".to_string(),
    };
    MeshError {
        path: path.to_string(),
        message: format!("expected {expected}, found {found}"),
    }
}

fn suggest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let key = camel(key).to_lowercase();
    known
        .map(|k| (strsim::damerau_levenshtein(&key, &k.to_lowercase()), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(minor: &str, v: Value) -> Result<(), MeshError> {
        let b = crate::bundle::bundles()
            .iter()
            .find(|b| b.minor == minor)
            .unwrap();
        schema(b).unwrap().check(&v)
    }

    #[test]
    fn a_number_for_a_string_field_is_refused_by_path() {
        let e = check("1.24", json!({"accessLogFile": 42})).unwrap_err();
        assert_eq!(e.path, "accessLogFile");
        assert_eq!(e.message, "expected a string, found the number 42");
    }

    #[test]
    fn nested_fields_lists_maps_and_enums_are_typed() {
        let e = check(
            "1.23",
            json!({"defaultConfig": {"proxyMetadata": {"A": 1}}}),
        )
        .unwrap_err();
        assert_eq!(e.path, "defaultConfig.proxyMetadata.A");
        let e = check(
            "1.24",
            json!({"extensionProviders": [{"name": "otel", "opentelemetry": {"port": "x"}}]}),
        )
        .unwrap_err();
        assert_eq!(e.path, "extensionProviders[0].opentelemetry.port");
        let e = check("1.24", json!({"outboundTrafficPolicy": {"mode": "ALLOW"}})).unwrap_err();
        assert_eq!(
            e.message,
            "expected one of REGISTRY_ONLY, ALLOW_ANY, found the string \"ALLOW\""
        );
    }

    #[test]
    fn what_istiod_accepts_is_accepted() {
        check(
            "1.24",
            json!({
                "accessLogFile": "/dev/stdout",
                "access_log_encoding": "JSON",
                "enableAutoMtls": null,
                "proxyListenPort": "15001",
                "connectTimeout": "1m30s",
                "outboundTrafficPolicy": {"mode": 1},
                "defaultConfig": {"holdApplicationUntilProxyStarts": true, "proxyMetadata": {"A": "b"}},
                "localityLbSetting": {"enabled": true, "failoverPriority": ["topology.kubernetes.io/zone"]},
                "extensionProviders": [{"name": "otel", "opentelemetry": {"service": "o.svc", "port": 4317}}],
            }),
        )
        .unwrap();
    }

    #[test]
    fn unknown_keys_oneofs_and_ranges_are_refused() {
        let e = check("1.24", json!({"acessLogFile": "/dev/stdout"})).unwrap_err();
        assert_eq!(
            e.message,
            "unknown field of MeshConfig; did you mean \"accessLogFile\"?"
        );
        let e = check(
            "1.24",
            json!({"extensionProviders": [{"name": "x", "zipkin": {}, "datadog": {}}]}),
        )
        .unwrap_err();
        assert_eq!(e.path, "extensionProviders[0]");
        assert!(e.message.contains("alternatives"), "{}", e.message);
        assert!(check("1.24", json!({"proxyListenPort": 4_294_967_296_u64})).is_err());
        assert!(check("1.24", json!({"proxyListenPort": 1.5})).is_err());
        assert!(check("1.24", json!({"enableTracing": "true"})).is_err());
        assert!(check("1.24", json!({"connectTimeout": "10"})).is_err());
    }

    #[test]
    fn go_durations() {
        for ok in ["0", "10s", "1.5s", "500ms", "1h2m3s", "-1s", "3µs"] {
            assert!(go_duration(ok), "{ok}");
        }
        for bad in ["", "10", "s", "1x", "1..5s", "1s2"] {
            assert!(!go_duration(bad), "{bad}");
        }
    }

    /// Every meshConfig the bundles themselves write (defaults and profiles) fits its schema.
    #[test]
    fn bundled_mesh_configs_fit_their_schema() {
        for b in crate::bundle::bundles() {
            let s = schema(b).unwrap();
            let defaults = b.default_values().unwrap();
            if let Some(m) = defaults.get("meshConfig") {
                s.check(m)
                    .unwrap_or_else(|e| panic!("{} defaults: {e:?}", b.minor));
            }
            for p in b.profiles() {
                let f = b
                    .yaml(&format!("profiles/{p}.yaml"))
                    .unwrap()
                    .unwrap_or_default();
                for m in [f.get("meshConfig"), f.pointer("/values/meshConfig")]
                    .into_iter()
                    .flatten()
                {
                    s.check(m)
                        .unwrap_or_else(|e| panic!("{} profile {p}: {e:?}", b.minor));
                }
            }
        }
    }
}
