//! Does the live object already say everything we want it to say? If so, no write is sent.
//!
//! The live object carries more than we sent (server defaults, status, fields of other
//! managers), so the test is "desired is a subset of live", with the API server's
//! normalisations taken into account: quantities (`2048Mi` comes back as `2Gi`), empty maps and
//! lists that are dropped, and numbers given as strings.

use crate::json::at;
use serde_json::Value;

/// Label with a digest of what the operator last applied to an object. The subset test alone
/// cannot see a field the spec *stopped* setting (a nodeSelector removed to recover a rollout);
/// a changed digest can, and server-side apply then removes the field we own. A label, not an
/// annotation: a Deployment's generation moves with its annotations, and adopting an install
/// must not look like a rollout.
pub const INTENT_LABEL: &str = "istioinstall.io/applied-digest";

/// Stamps the digest of `desired` (without the label itself) into it; returns the digest.
pub fn stamp_intent(desired: &mut Value) -> String {
    if let Some(l) = desired
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(INTENT_LABEL);
    }
    let digest = format!("{:016x}", fnv1a(desired.to_string().as_bytes()));
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(l) = labels.as_object_mut() {
            l.insert(INTENT_LABEL.into(), Value::String(digest.clone()));
        }
    }
    digest
}

/// The intent digest stamped into an object, if any.
pub fn intent_of(obj: &Value) -> Option<&str> {
    crate::json::at(obj, &["metadata", "labels", INTENT_LABEL]).as_str()
}

/// Whether the live object was last applied from a different intent (or never by us).
pub fn intent_changed(live: &Value, digest: &str) -> bool {
    at(live, &["metadata", "labels", INTENT_LABEL]).as_str() != Some(digest)
}

/// FNV-1a, 64 bits: a digest that stays the same across Rust releases and operator restarts
/// (std's hasher does not promise that), for change detection only, not for security; a few
/// lines, so no crate for it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// True when `live` is missing or differs from `desired` in any field `desired` sets.
pub fn needs_write(desired: &Value, live: Option<&Value>) -> bool {
    match live {
        None => true,
        Some(live) => !subset(desired, live, &mut Vec::new()),
    }
}

fn subset(want: &Value, have: &Value, path: &mut Vec<String>) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, wv)| {
            // Status is the server's; metadata that the server assigns is not ours to compare.
            if path.is_empty() && k == "status" {
                return true;
            }
            path.push(k.clone());
            let ok = match h.get(k) {
                Some(hv) => subset(wv, hv, path),
                None => is_empty(wv),
            };
            path.pop();
            ok
        }),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(wv, hv)| subset(wv, hv, path))
        }
        (Value::Array(w), Value::Null) => w.is_empty(),
        (Value::Object(w), Value::Null) => w.is_empty(),
        (Value::String(a), Value::String(b)) => a == b || same_quantity(a, b),
        (Value::String(a), Value::Number(n)) | (Value::Number(n), Value::String(a)) => {
            a == &n.to_string()
                || quantity_value(a)
                    .zip(n.as_f64())
                    .is_some_and(|(x, y)| x == y)
        }
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        (w, h) => w == h,
    }
}

/// Values the API server drops when serialising (Go `omitempty`): asking for them is the same as
/// leaving them out.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity_value(a), quantity_value(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(1.0),
        _ => false,
    }
}

/// The value of a Kubernetes quantity (`500m`, `2Gi`, `1.5`, `1e3`), or `None` if `s` is not one.
pub fn quantity_value(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "-" || num == "+" {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * factor)
}
