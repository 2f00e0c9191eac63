//! No template injection: every string-typed value path of the values schema (`values/defaults`
//! of each bundle), fed hostile strings, renders the same set of objects as a plain value does,
//! and the hostile string arrives verbatim wherever the plain one arrived (inside ConfigMap data
//! that holds YAML or JSON too). A value the validator or a template's `fail(...)` refuses is an
//! acceptable answer; text that breaks the YAML, an object that appears or disappears, or a
//! string that arrives changed is not.

use super::*;
use crate::validate::ValidationError;
use std::collections::BTreeSet;

const MARKER: &str = "plainvaluemarker";

/// Hostile strings: YAML structure, document separators, quotes, control and line-separator
/// characters, words YAML 1.1 reads as other types, and template syntax.
fn hostile() -> Vec<String> {
    let mut out: Vec<String> = [
        "a\nb",
        "x\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: pwned}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\n",
        "---",
        "key: value",
        ": ",
        "{a: b}",
        "[1, 2]",
        "# comment",
        "\"double' single",
        "tab\there",
        "line\u{2028}sep\u{2029}para\u{85}nel",
        "- item",
        "&anchor *alias !!binary",
        "true",
        "null",
        "0x1F",
        "{{ values }}{% if 1 %}",
        "back\\slash\r\nwindows",
        " leading and trailing ",
    ]
    .map(String::from)
    .to_vec();
    out.push("m".repeat(1 << 20));
    out
}

/// A spec that enables every component of a release, with `values` at `path` set to `value`.
fn spec(release: &str, path: &str, value: &str) -> Result<IstioInstallSpec, String> {
    let mut values = json!({});
    crate::values::set_path(&mut values, path, json!(value))?;
    serde_json::from_value(json!({
        "version": release,
        "profile": "ambient",
        "values": values,
        "components": {
            "ingressGateways": [{"name": "istio-ingressgateway", "enabled": true}],
            "egressGateways": [{"name": "istio-egressgateway", "enabled": true}],
        },
        "waypoints": [{"namespace": "bookinfo"}],
    }))
    .map_err(|e| e.to_string())
}

/// Every path to a string leaf of the defaults, plus free-form maps and lists given a key.
fn string_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::String(_) => out.push(prefix.to_string()),
        Value::Object(m) if m.is_empty() && !prefix.is_empty() => {
            // A free-form map (pilot.env, labels, annotations): any key goes.
            out.push(format!("{prefix}.HOSTILE_KEY"));
        }
        Value::Object(m) => {
            for (k, v) in m {
                if k.contains('.') {
                    continue;
                }
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                string_paths(v, &p, out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
    /// The string here is itself YAML or JSON; the path goes on inside it.
    Parsed,
}

fn parse_embedded(s: &str) -> Option<Value> {
    if !(s.contains('\n') || s.starts_with('{')) {
        return None;
    }
    crate::bundle::parse_yaml(s)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
}

/// Where a string containing `needle` sits: (path, the whole string there).
fn locations(v: &Value, needle: &str, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, String)>) {
    match v {
        Value::String(s) => {
            if let Some(inner) = parse_embedded(s) {
                path.push(Step::Parsed);
                let before = out.len();
                locations(&inner, needle, path, out);
                path.pop();
                if out.len() > before {
                    return;
                }
            }
            if s.contains(needle) {
                out.push((path.clone(), s.clone()));
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                path.push(Step::Key(k.clone()));
                locations(v, needle, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Step::Index(i));
                locations(v, needle, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at(v: &Value, path: &[Step]) -> Option<Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(v.clone());
    };
    match first {
        Step::Key(k) => at(v.get(k)?, rest),
        Step::Index(i) => at(v.get(*i)?, rest),
        Step::Parsed => at(&parse_embedded(v.as_str()?)?, rest),
    }
}

fn keys(objects: &[RenderedObject]) -> BTreeSet<(String, Option<String>, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o.kind().to_string(),
                o.namespace().map(String::from),
                o.name().to_string(),
            )
        })
        .collect()
}

fn render_with(
    release: &str,
    path: &str,
    value: &str,
) -> Option<Result<Vec<RenderedObject>, String>> {
    let spec = spec(release, path, value).ok()?;
    match validate(&spec) {
        Err(ValidationError::Invalid { .. } | ValidationError::UnsupportedChoice { .. }) => None,
        Err(ValidationError::Values(_)) => None,
        Err(e) => Some(Err(e.to_string())),
        Ok(v) => match render(&v, Some("test")) {
            Ok(objects) => Some(Ok(objects)),
            // A template's own refusal of a value is an answer, not an injection.
            Err(RenderError::Template { .. }) => None,
            Err(e) => Some(Err(e.to_string())),
        },
    }
}

#[test]
fn hostile_strings_in_every_string_value_arrive_verbatim_and_add_nothing() {
    let hostile = hostile();
    let mut checked = 0;
    let mut failures = Vec::new();
    for release in ["1.23.6", "1.24.6"] {
        let (_, bundle) = crate::bundle::resolve(release).expect("bundled");
        let mut paths = Vec::new();
        string_paths(&bundle.default_values().unwrap(), "", &mut paths);
        assert!(paths.len() > 40, "{release}: only {} paths", paths.len());
        for path in &paths {
            let Some(Ok(plain)) = render_with(release, path, MARKER) else {
                continue;
            };
            let plain_json = json!(plain.iter().map(|o| &o.object).collect::<Vec<_>>());
            let mut places = Vec::new();
            locations(&plain_json, MARKER, &mut Vec::new(), &mut places);
            for h in &hostile {
                let shown = if h.len() > 40 { &h[..40] } else { h };
                let objects = match render_with(release, path, h) {
                    None => continue,
                    Some(Err(e)) => {
                        failures.push(format!("{release} values.{path} = {shown:?}: {e}"));
                        continue;
                    }
                    Some(Ok(objects)) => objects,
                };
                checked += 1;
                // A value used in names (the revision) renames objects, nothing more.
                let expected: BTreeSet<_> = keys(&plain)
                    .into_iter()
                    .map(|(k, ns, n)| (k, ns.map(|ns| ns.replace(MARKER, h)), n.replace(MARKER, h)))
                    .collect();
                if keys(&objects) != expected {
                    failures.push(format!(
                        "{release} values.{path} = {shown:?}: the set of objects changed"
                    ));
                    continue;
                }
                let got = json!(objects.iter().map(|o| &o.object).collect::<Vec<_>>());
                for (place, plain_text) in &places {
                    // Where the plain value arrived, the hostile one arrives whole (a template
                    // may frame it differently: an image with a `/` is a full reference).
                    let want = plain_text.replace(MARKER, h);
                    let found = at(&got, place);
                    let arrived = found
                        .as_ref()
                        .and_then(Value::as_str)
                        .is_some_and(|f| f == want || f.contains(h.as_str()));
                    if !arrived {
                        failures.push(format!(
                            "{release} values.{path} = {shown:?}: at {place:?} expected {:?}, found {:?}",
                            want.chars().take(80).collect::<String>(),
                            found.map(|f| f.to_string().chars().take(80).collect::<String>())
                        ));
                        break;
                    }
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} renders checked");
    assert!(
        failures.is_empty(),
        "{} failures, the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
