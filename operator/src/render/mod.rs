//! render: a [`ValidatedInstall`] in, Kubernetes objects out, grouped by component and in apply
//! order. Pure. Templates produce text once; everything after (namespaces, labels, Kubernetes
//! overrides, overlays, ordering) works on structured objects.

pub mod boundary;
mod emit_yaml;
mod k8s;
mod template_yaml;
pub mod waypoints;

use crate::api::MANAGER;
use crate::bundle;
use crate::json::at;
use crate::validate::{ComponentKind, ValidatedComponent, ValidatedInstall};
use minijinja::value::{Rest, Serde};
use minijinja::{Environment, Error as TemplateError, ErrorKind, State, UndefinedBehavior};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Label on every rendered object: the component it belongs to.
pub const COMPONENT_LABEL: &str = "istioinstall.io/component";
/// Label on every rendered object: the IstioInstall that owns it.
pub const INSTALL_LABEL: &str = "istioinstall.io/install";

/// One rendered object and the component it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedObject {
    pub component: ComponentKind,
    /// `base`, `pilot`, `cni`, `ztunnel` or the gateway name.
    pub component_name: String,
    pub object: Value,
}

impl RenderedObject {
    pub fn kind(&self) -> &str {
        at(&self.object, &["kind"]).as_str().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        at(&self.object, &["metadata", "name"])
            .as_str()
            .unwrap_or_default()
    }
    pub fn namespace(&self) -> Option<&str> {
        at(&self.object, &["metadata", "namespace"]).as_str()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// A template refused the values (a `fail(...)` in the template) or broke.
    #[error("{message} (template charts/{template}{})", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        template: String,
        line: Option<usize>,
        message: String,
    },
    #[error("charts/{template} rendered invalid YAML: {message}")]
    Yaml { template: String, message: String },
    #[error("spec.components.{component}.k8s: {message}")]
    Override { component: String, message: String },
    /// An object outside what an Istio install may write (see [`boundary`]).
    #[error(
        "refused by the security boundary: component {component}: {object}: {field}: {message}"
    )]
    Boundary {
        component: String,
        object: String,
        field: String,
        message: String,
    },
}

pub use crate::kinds::is_cluster_scoped;

// The one `expect` is on a constant syntax configuration (see there): nothing else fits a
// `OnceLock` initialiser, and the render tests exercise it on every bundle.
#[allow(clippy::expect_used)]
fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                // A constant: the default delimiters plus two whitespace options, which
                // `build` cannot refuse; a silent fallback would render different YAML.
                .expect("valid syntax config"),
        );
        // Templates compile on first use: a process rendering one release never pays for the
        // other bundles' templates.
        env.set_loader(|name| {
            let Some((minor, path)) = name.split_once('/') else {
                return Ok(None);
            };
            Ok(bundle::bundles()
                .iter()
                .find(|b| b.minor == minor)
                .and_then(|b| b.file(path))
                .filter(|_| path.starts_with("templates/") && !path.contains("/files/"))
                .map(str::to_string))
        });
        // Imports are relative to the importing template (`{% from "_macros.jinja" import x %}`),
        // so a template reads the same in every minor and in charts/common/.
        env.set_path_join_callback(|name, parent| match parent.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}").into(),
            None => name.into(),
        });
        env.add_function("release_at_least", release_at_least);
        env.add_function("fail", |msg: String| -> Result<(), TemplateError> {
            Err(TemplateError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("file", read_file);
        // Jinja's `namespace()` (state that survives a loop) under a name the template context
        // does not shadow: `namespace` is this component's namespace there.
        env.add_function("accumulator", minijinja::functions::namespace);
        env.add_filter("toyaml", |v: minijinja::Value| emit_yaml::to_yaml(&v));
        env.add_filter("merge", merge_template_values);
        env.add_function("emit", |object: minijinja::Value| {
            EMITTED.with_borrow_mut(|emitted| emitted.push(object));
            // Safe, so that the JSON auto-escaping of `.yaml` templates writes nothing.
            minijinja::Value::from_safe_string(String::new())
        });
        env
    })
}

thread_local! {
    /// Objects the template being rendered handed over with `emit(...)`, in order.
    static EMITTED: RefCell<Vec<minijinja::Value>> = const { RefCell::new(Vec::new()) };
}

/// `a | merge(b)`: the deep merge of [`crate::values::merge`] (maps merge key by key, anything
/// else replaces, a null removes the key) on template values, without converting them: the
/// injector merges 60 KB of injection templates this way on every render.
fn merge_template_values(
    base: minijinja::Value,
    overlay: minijinja::Value,
) -> Result<minijinja::Value, TemplateError> {
    use minijinja::value::ValueKind::Map;
    if base.kind() != Map || overlay.kind() != Map {
        return Ok(overlay);
    }
    if overlay.len() == Some(0) {
        return Ok(base);
    }
    let mut entries: Vec<(minijinja::Value, minijinja::Value)> = base
        .try_iter()?
        .map(|k| base.get_item(&k).map(|v| (k, v)))
        .collect::<Result<_, _>>()?;
    for key in overlay.try_iter()? {
        let value = overlay.get_item(&key)?;
        let slot = entries.iter().position(|(k, _)| *k == key);
        match (slot, value.is_none() || value.is_undefined()) {
            (Some(i), true) => {
                entries.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(entry) = entries.get_mut(i) {
                    entry.1 = merge_template_values(entry.1.clone(), value)?;
                }
            }
            (None, false) => entries.push((key, value)),
        }
    }
    Ok(minijinja::Value::from_pairs(entries))
}

/// `release_at_least("1.25")` / `release_at_least("1.24.3")`: whether the release rendered is
/// that one or newer, for a template shared by minors that differ a little. A change backported
/// to several minors lists where it arrived in each, oldest first:
/// `release_at_least("1.24.5", "1.25.2")` holds for 1.24.5+, 1.25.2+ and any later minor.
fn release_at_least(state: &State, versions: Rest<String>) -> Result<bool, TemplateError> {
    let bad = |what: &str| {
        TemplateError::new(
            ErrorKind::InvalidOperation,
            format!(
                "release_at_least({}): {what}; expected minors (1.25) or releases (1.25.1), oldest first",
                versions.join(", ")
            ),
        )
    };
    let wanted: Vec<bundle::Release> = versions
        .iter()
        .map(|v| bundle::Release::parse(v).or_else(|| bundle::Release::parse(&format!("{v}.0"))))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("not a version"))?;
    if wanted.is_empty() || !wanted.is_sorted() {
        return Err(bad("none given or not in order"));
    }
    let current = state
        .lookup("release")
        .and_then(|r| r.get_attr("version").ok())
        .and_then(|v| v.as_str().and_then(bundle::Release::parse))
        .ok_or_else(|| bad("no release in the context"))?;
    // The entry of the release's own minor decides; without one, the newest entry does (a later
    // minor has every change of the earlier ones).
    let decisive = wanted
        .iter()
        .find(|w| (w.major, w.minor) == (current.major, current.minor))
        .or_else(|| wanted.last())
        .ok_or_else(|| bad("release_at_least() needs at least one release"))?;
    Ok(current >= *decisive)
}

/// `file("files/sidecar.yaml")`: a raw file next to the calling template (not rendered).
fn read_file(state: &State, path: String) -> Result<String, TemplateError> {
    let name = state.name();
    let (minor, rest) = name.split_once('/').unwrap_or((name, ""));
    let dir = rest.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    bundle::bundles()
        .iter()
        .find(|b| b.minor == minor)
        .and_then(|b| b.file(&format!("{dir}/{path}")))
        .map(str::to_string)
        .ok_or_else(|| {
            TemplateError::new(
                ErrorKind::TemplateNotFound,
                format!("no file {dir}/{path} in charts/{minor}"),
            )
        })
}

/// Renders every enabled component. `owner` is the IstioInstall's name, recorded as a label.
pub fn render(
    install: &ValidatedInstall,
    owner: Option<&str>,
) -> Result<Vec<RenderedObject>, RenderError> {
    let env = environment();
    let mut out = Vec::new();
    let values = minijinja::Value::from(Serde(&install.values));
    for component in &install.components {
        let mut objects = if component.kind == ComponentKind::Waypoints {
            install
                .waypoints
                .iter()
                .map(|w| waypoints::gateway(w, &install.revision))
                .collect()
        } else {
            render_templates(env, install, component, &values)?
        };
        for obj in &mut objects {
            finish_metadata(obj, component, owner)?;
        }
        if let Some(k8s) = &component.k8s {
            k8s::apply_overrides(&mut objects, k8s).map_err(|message| RenderError::Override {
                component: component.kind.field().to_string(),
                message,
            })?;
        }
        objects.sort_by_key(|o| crate::kinds::apply_rank(o["kind"].as_str().unwrap_or_default()));
        out.extend(objects.into_iter().map(|object| RenderedObject {
            component: component.kind,
            component_name: component.name.clone(),
            object,
        }));
    }
    boundary::check(&out, &install.namespaces(), owner)?;
    Ok(out)
}

/// The objects of one chart component's templates, as the templates wrote them.
fn render_templates(
    env: &Environment<'static>,
    install: &ValidatedInstall,
    component: &ValidatedComponent,
    values: &minijinja::Value,
) -> Result<Vec<Value>, RenderError> {
    let bundle = install.bundle();
    let dir = format!("templates/{}/", component.kind.template_dir());
    let ctx = context(install, component, values);
    let mut objects = Vec::new();
    for (path, _) in bundle.files_under(&dir) {
        if path.contains("/files/") || !path.ends_with(".yaml") {
            continue;
        }
        let name = format!("{}/{path}", bundle.minor);
        let tmpl = env
            .get_template(&name)
            .map_err(|e| template_error(&name, &e))?;
        EMITTED.with_borrow_mut(Vec::clear);
        let text = tmpl.render(&ctx).map_err(|e| template_error(&name, &e))?;
        let documents = split_documents(&text).map(|doc| {
            parse_document(doc).map_err(|message| RenderError::Yaml {
                template: source(&name),
                message,
            })
        });
        let emitted = EMITTED.take().into_iter().map(|object| {
            serde_json::to_value(&object).map_err(|e| RenderError::Yaml {
                template: source(&name),
                message: format!("emit(...): {e}"),
            })
        });
        for value in documents.chain(emitted) {
            let value = value?;
            if value.as_object().is_some_and(|o| o.contains_key("kind")) {
                objects.push(value);
            }
        }
    }
    Ok(objects)
}

/// The template context of one component. `values` is converted once per render and shared
/// (minijinja values are reference-counted), not once per component.
fn context(
    install: &ValidatedInstall,
    component: &ValidatedComponent,
    values: &minijinja::Value,
) -> minijinja::Value {
    let gateway = match component.kind {
        ComponentKind::IngressGateway | ComponentKind::EgressGateway => {
            let ingress = component.kind == ComponentKind::IngressGateway;
            let key = if ingress {
                "istio-ingressgateway"
            } else {
                "istio-egressgateway"
            };
            json!({
                "name": component.name,
                "type": if ingress { "ingress" } else { "egress" },
                "labels": component.labels,
                "values": at(&install.values, &["gateways", key]),
            })
        }
        _ => Value::Null,
    };
    let rest = minijinja::Value::from(Serde(json!({
        "release": {
            "version": install.release.to_string(),
            "minor": install.release.minor_string(),
            "patch": install.release.patch,
        },
        "profile": install.profile,
        "revision": install.revision,
        "namespace": component.namespace,
        "istioNamespace": install.namespace,
        "component": component.kind.field(),
        "gateway": gateway,
    })));
    minijinja::context! { values => values.clone(), ..rest }
}

fn template_error(name: &str, e: &TemplateError) -> RenderError {
    let message = match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("template failed").to_string(),
        _ => e.to_string(),
    };
    RenderError::Template {
        template: source(e.name().unwrap_or(name)),
        line: e.line(),
        message,
    }
}

/// `1.24/templates/x.yaml` → where that file is: `1.24/templates/x.yaml` or
/// `common/templates/x.yaml`.
fn source(name: &str) -> String {
    let (minor, path) = name.split_once('/').unwrap_or((name, ""));
    bundle::bundles()
        .iter()
        .find(|b| b.minor == minor)
        .map(|b| b.source(path))
        .unwrap_or_else(|| name.to_string())
}

/// Parses one rendered document: with the fast reader of our templates' YAML, or with
/// yaml-rust2 for what that reader leaves to it. (Structures a template builds whole go through
/// `emit(...)`, not through text.)
fn parse_document(doc: &str) -> Result<Value, String> {
    match template_yaml::parse(doc) {
        Ok(value) => Ok(value),
        Err(template_yaml::Unsupported) => parse_template_yaml(doc),
    }
}

/// Parses YAML that our own templates produced. yaml-rust2 (YAML 1.2 core schema) reads it about
/// twice as fast as serde-saphyr, whose span tracking and diagnostics serve user input; errors
/// here are template bugs, reported with the template name by the caller.
fn parse_template_yaml(doc: &str) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    fn to_json(y: Yaml) -> Result<Value, String> {
        Ok(match y {
            Yaml::Null => Value::Null,
            Yaml::Boolean(b) => Value::Bool(b),
            Yaml::Integer(i) => Value::from(i),
            Yaml::String(s) => Value::String(s),
            Yaml::Real(r) => {
                let f: f64 = r.parse().map_err(|_| format!("{r:?} is not a number"))?;
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{r} is not a finite number"))?
            }
            Yaml::Array(a) => Value::Array(a.into_iter().map(to_json).collect::<Result<_, _>>()?),
            Yaml::Hash(h) => {
                let mut m = serde_json::Map::with_capacity(h.len());
                for (k, v) in h {
                    let key = match k {
                        Yaml::String(s) => s,
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        Yaml::Real(r) => r,
                        other => return Err(format!("unsupported mapping key {other:?}")),
                    };
                    m.insert(key, to_json(v)?);
                }
                Value::Object(m)
            }
            Yaml::Alias(_) | Yaml::BadValue => {
                return Err("aliases and invalid values are not supported".into());
            }
        })
    }
    let mut docs = yaml_rust2::YamlLoader::load_from_str(doc).map_err(|e| e.to_string())?;
    match docs.len() {
        0 => Ok(Value::Null),
        1 => to_json(docs.remove(0)),
        n => Err(format!("{n} documents where one was expected")),
    }
}

/// Splits multi-document YAML on `---` lines.
pub fn split_documents(text: &str) -> impl Iterator<Item = &str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter().filter(|d| !d.trim().is_empty())
}

/// Namespace and ownership labels on a rendered object; an object, metadata or labels that are
/// not maps are refused (naming the field) rather than written into.
fn finish_metadata(
    obj: &mut Value,
    component: &ValidatedComponent,
    owner: Option<&str>,
) -> Result<(), RenderError> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let refused = |field: &str, found: &Value| RenderError::Boundary {
        component: component.kind.field().to_string(),
        object: kind.clone(),
        field: field.to_string(),
        message: format!("expected a map, found {found}"),
    };
    let Some(obj) = obj.as_object_mut() else {
        return Err(refused("(the object)", obj));
    };
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(refused("metadata", meta));
    };
    if is_cluster_scoped(&kind) {
        meta.remove("namespace");
    } else if meta.get("namespace").is_none() {
        meta.insert("namespace".into(), json!(component.namespace));
    }
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    let Some(labels) = labels.as_object_mut() else {
        return Err(refused("metadata.labels", labels));
    };
    labels.insert("app.kubernetes.io/managed-by".into(), json!(MANAGER));
    labels.insert(COMPONENT_LABEL.into(), json!(component.name));
    if let Some(owner) = owner {
        labels.insert(INSTALL_LABEL.into(), json!(owner));
    }
    Ok(())
}

/// Objects as multi-document YAML, in apply order.
pub fn to_yaml(objects: &[RenderedObject]) -> Result<String, String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(
            &serde_saphyr::to_string(&o.object)
                .map_err(|e| format!("{} {}: {e}", o.kind(), o.name()))?,
        );
    }
    Ok(out)
}

/// Objects as a `v1/List`.
pub fn to_json(objects: &[RenderedObject]) -> Result<String, String> {
    let items: Vec<&Value> = objects.iter().map(|o| &o.object).collect();
    serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
