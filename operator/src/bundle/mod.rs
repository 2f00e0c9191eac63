//! The embedded version bundles: one folder per Istio minor under `charts/`, compiled into the
//! binary. A bundle is data only (its releases, profiles, values layers and templates), so adding
//! a minor is a new folder, not new code.
//!
//! `charts/common/` holds the files several minors share; a minor's folder holds only what
//! differs. A file of the minor replaces the common file at the same path, and an empty file
//! (or one with only comments) hides it from that minor. Everything below sees the merged view.
//!
//! ```text
//! charts/<minor>/bundle.yaml                  releases, hub, profiles, compatibility versions, platforms,
//!                                             Gateway API version, minimum Kubernetes, upgrade notes
//! charts/<minor>/profiles/<profile>.yaml      IstioOperator profile: components + values
//! charts/<minor>/values/defaults/*.yaml       chart defaults in IstioOperator `values` shape (deep-merged)
//! charts/<minor>/values/profile-<p>.yaml      chart-level profile layer (`values.profile`)
//! charts/<minor>/values/compatibility-<v>.yaml  `values.compatibilityVersion` layer
//! charts/<minor>/values/platform-<p>.yaml     `values.global.platform` layer
//! charts/<minor>/templates/<component>/*.yaml minijinja templates, one component per folder
//! charts/<minor>/templates/<component>/files/ raw files the templates embed (injection templates)
//! ```

use crate::validate::meshconfig::MeshSchema;
use include_dir::{Dir, include_dir};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

static CHARTS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../charts");

/// What `bundle.yaml` declares about a minor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleManifest {
    /// Every patch release this bundle renders, oldest first.
    pub releases: Vec<String>,
    /// Default image registry.
    pub hub: String,
    /// The IstioOperator profiles of this minor (`profiles/<name>.yaml`, here or in common).
    pub profiles: Vec<String>,
    /// The Gateway API release (standard channel) this minor's istiod is built against, for the
    /// message when waypoints need CRDs that are missing (`"v1.2.1"`).
    pub gateway_api: String,
    /// `values.compatibilityVersion` values this minor accepts.
    #[serde(default)]
    pub compatibility_versions: Vec<String>,
    /// `values.global.platform` values this minor accepts.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Chart-level profiles (`values.profile`) this minor accepts.
    #[serde(default)]
    pub chart_profiles: Vec<String>,
    /// The oldest Kubernetes minor this Istio minor installs on (`"1.28"`).
    #[serde(default)]
    pub min_kubernetes: Option<String>,
    /// Known hazards of upgrading to a release of this minor, reported before the upgrade.
    #[serde(default)]
    pub upgrade_notes: Vec<UpgradeNote>,
}

/// A known hazard of one upgrade path (from the release notes and issue trackers).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeNote {
    /// The minor upgraded from (`"1.23"`).
    pub from: String,
    /// The releases of this minor it concerns; empty: all of them.
    #[serde(default)]
    pub releases: Vec<String>,
    /// Only when this component is enabled (`pilot`, `cni`, `ztunnel`, ...).
    #[serde(default)]
    pub if_component: Option<String>,
    /// Only when this dotted values path is true.
    #[serde(default)]
    pub if_value: Option<String>,
    /// What happens and what to do about it.
    pub message: String,
}

/// One Istio minor: its manifest and the files of its folder.
pub struct Bundle {
    pub minor: String,
    pub manifest: BundleManifest,
    /// Path relative to the minor's folder → text: `charts/common/` with the minor's own files
    /// over it. Hidden (empty) files are left out.
    files: BTreeMap<String, String>,
    /// The paths of `files` that come from `charts/common/`, for messages naming a file.
    common: std::collections::BTreeSet<String>,
    /// Parsed YAML files and merged values layers, memoised: they never change within a
    /// process. Parsed when first asked for (a process that renders one minor reads only the
    /// files it needs); a file that does not parse is an `Err` naming it, never a panic.
    parsed: std::sync::Mutex<BTreeMap<String, Result<Option<Value>, String>>>,
    /// The MeshConfig schema of this minor (`meshconfig.yaml`), parsed when first asked for.
    mesh_schema: OnceLock<Result<MeshSchema, String>>,
}

/// An exact release resolved from `spec.version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Release {
    pub fn parse(s: &str) -> Option<Release> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let (major, minor, patch) = (it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(Release {
            major,
            minor,
            patch,
        })
    }
    pub fn minor_string(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BundleError {
    #[error("spec.version: {found:?} is not bundled; expected one of {expected}")]
    UnknownVersion { found: String, expected: String },
    #[error(
        "spec.version: {found:?} is not a version; expected a minor such as 1.24 or a release such as 1.24.6"
    )]
    BadVersion { found: String },
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("minor", &self.minor)
            .finish_non_exhaustive()
    }
}

// Bundles are unique by minor (one folder each).
impl PartialEq for Bundle {
    fn eq(&self, other: &Bundle) -> bool {
        self.minor == other.minor
    }
}

impl Bundle {
    /// A file of this bundle as text, by path relative to the minor's folder.
    pub fn file(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    /// Where a file of this bundle is, relative to `charts/` (`common/templates/...` or
    /// `1.24/templates/...`).
    pub fn source(&self, path: &str) -> String {
        if self.common.contains(path) {
            format!("{COMMON}/{path}")
        } else {
            format!("{}/{path}", self.minor)
        }
    }

    /// A YAML file of this bundle parsed to JSON values; `None` when absent, `Err` (naming
    /// the file) when it does not parse.
    pub fn yaml(&self, path: &str) -> Result<Option<Value>, String> {
        self.memo(&format!("file:{path}"), || {
            self.file(path)
                .map(|text| {
                    parse_yaml(text).map_err(|e| format!("charts/{}: {e}", self.source(path)))
                })
                .transpose()
        })
    }

    fn memo(
        &self,
        key: &str,
        compute: impl FnOnce() -> Result<Option<Value>, String>,
    ) -> Result<Option<Value>, String> {
        // A poisoned lock only means a thread panicked while holding it; the map is whole.
        let lock = || self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = lock().get(key) {
            return v.clone();
        }
        let v = compute();
        lock().insert(key.to_string(), v.clone());
        v
    }

    /// Every file under `dir` (relative to the minor), as (path relative to the minor, text).
    pub fn files_under(&self, dir: &str) -> Vec<(&str, &str)> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.files
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect()
    }

    /// A values layer: `values/<name>.yaml` and every `values/<name>/*.yaml`, deep-merged
    /// (each component keeps its part of a layer in its own file). `None` when absent.
    pub fn layer(&self, name: &str) -> Result<Option<Value>, String> {
        self.memo(&format!("layer:{name}"), || self.merge_layer(name))
    }

    fn merge_layer(&self, name: &str) -> Result<Option<Value>, String> {
        let single = format!("values/{name}.yaml");
        let mut parts: Vec<&str> = self
            .file(&single)
            .map(|_| single.as_str())
            .into_iter()
            .collect();
        parts.extend(
            self.files_under(&format!("values/{name}"))
                .into_iter()
                .map(|(p, _)| p),
        );
        if parts.is_empty() {
            return Ok(None);
        }
        let mut merged = Value::Object(Default::default());
        for path in parts {
            let layer = self.yaml(path)?.unwrap_or(Value::Null);
            if let Some(conflict) = crate::values::merge_disjoint(&mut merged, layer) {
                return Err(format!(
                    "charts/{}: {conflict} is also set by another file of layer {name}",
                    self.source(path)
                ));
            }
        }
        Ok(Some(merged))
    }

    /// The MeshConfig fields and types of this minor's istiod.
    pub fn mesh_schema(&self) -> Result<&MeshSchema, String> {
        self.mesh_schema
            .get_or_init(|| {
                let v = self.yaml("meshconfig.yaml")?.ok_or_else(|| {
                    format!(
                        "charts/{}/meshconfig.yaml is missing; write it with \
                         e2e/meshconfig-schema.py",
                        self.minor
                    )
                })?;
                MeshSchema::parse(v)
                    .map_err(|e| format!("charts/{}: {e}", self.source("meshconfig.yaml")))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Reads everything this bundle holds besides its templates (every YAML file, every values
    /// layer, the MeshConfig schema) and says what does not parse, one message per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut layers = std::collections::BTreeSet::new();
        for path in self.files.keys() {
            if !path.ends_with(".yaml") || path.starts_with("templates/") {
                continue;
            }
            if let Err(e) = self.yaml(path) {
                out.push(e);
            } else if let Some(rest) = path.strip_prefix("values/") {
                // `values/<name>.yaml` and `values/<name>/<part>.yaml` are parts of layer <name>.
                layers.insert(match rest.split_once('/') {
                    Some((dir, _)) => dir,
                    None => rest.trim_end_matches(".yaml"),
                });
            }
        }
        for name in layers {
            if let Err(e) = self.layer(name) {
                out.push(e);
            }
        }
        if let Err(e) = self.mesh_schema() {
            out.push(e);
        }
        out
    }

    /// Profiles of this minor, as `bundle.yaml` lists them (each has `profiles/<name>.yaml`).
    pub fn profiles(&self) -> Vec<String> {
        self.manifest.profiles.clone()
    }

    /// The chart defaults: every `values/defaults/*.yaml` deep-merged. Two files setting the same
    /// leaf to different values is a bundle bug, an `Err` naming the file (see [`load_errors`]).
    pub fn default_values(&self) -> Result<Value, String> {
        Ok(self
            .layer("defaults")?
            .unwrap_or_else(|| Value::Object(Default::default())))
    }
}

fn collect_embedded(dir: &'static Dir<'static>, root: &str, out: &mut BTreeMap<String, String>) {
    for f in dir.files() {
        if let Some(text) = f.contents_utf8() {
            let path = f.path().to_string_lossy();
            let rel = path
                .strip_prefix(&format!("{root}/"))
                .unwrap_or(&path)
                .to_string();
            out.insert(rel, text.to_string());
        }
    }
    for d in dir.dirs() {
        collect_embedded(d, root, out);
    }
}

fn collect_disk(dir: &std::path::Path, root: &std::path::Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect_disk(&path, root, out);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .to_string();
            out.insert(rel, text);
        }
    }
}

/// Parses one YAML document into JSON values (empty text, or only comments, is an empty object).
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    if is_blank(text) {
        return Ok(Value::Object(Default::default()));
    }
    serde_saphyr::from_str_with_options::<Value>(text, yaml_options()).map_err(|e| e.to_string())
}

/// Empty, or only comments and blank lines: a minor's file in this state hides the common one.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l.starts_with("{#") && l.ends_with("#}"))
}

/// The folder of `charts/` whose files every minor shares unless it has its own.
pub const COMMON: &str = "common";

/// YAML 1.2 core schema: only `true`/`false` are booleans, so a value such as `y` or `on`
/// stays a string, as Kubernetes and Helm users expect for annotations and labels.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o
}

/// Set to a `charts/` folder to read the bundles from disk instead of the binary (chart
/// development: edit a template, re-run `render`, no rebuild).
pub const CHARTS_DIR_ENV: &str = "ISTIO_INSTALL_CHARTS_DIR";

/// All bundles that loaded, newest minor last.
pub fn bundles() -> &'static [Bundle] {
    &loaded().0
}

/// What does not load or parse in the bundles (or the charts folder), one message per
/// problem, naming the file. Empty for a sound binary (a unit test checks it); `run` refuses
/// to start otherwise, rather than fail installs one by one. It reads every bundle whole
/// (≈10 ms), so the one-shot CLI commands skip it: they meet a broken file as an error.
pub fn load_errors() -> Vec<String> {
    let mut out = loaded().1.clone();
    out.extend(bundles().iter().flat_map(Bundle::problems));
    out
}

fn loaded() -> &'static (Vec<Bundle>, Vec<String>) {
    static ALL: OnceLock<(Vec<Bundle>, Vec<String>)> = OnceLock::new();
    ALL.get_or_init(|| match std::env::var_os(CHARTS_DIR_ENV) {
        Some(root) => {
            let root = std::path::PathBuf::from(root);
            match std::fs::read_dir(&root) {
                Ok(entries) => {
                    let folders = entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| {
                            let mut files = BTreeMap::new();
                            collect_disk(&e.path(), &e.path(), &mut files);
                            (e.file_name().to_string_lossy().to_string(), files)
                        })
                        .collect();
                    load(folders)
                }
                Err(e) => (
                    Vec::new(),
                    vec![format!(
                        "{CHARTS_DIR_ENV}={}: {e}; set it to a charts/ folder or unset it",
                        root.display()
                    )],
                ),
            }
        }
        None => load(
            CHARTS
                .dirs()
                .map(|dir| {
                    let minor = dir.path().to_string_lossy().to_string();
                    let mut files = BTreeMap::new();
                    collect_embedded(dir, &minor, &mut files);
                    (minor, files)
                })
                .collect(),
        ),
    })
}

/// Bundles from the folders of `charts/` (name → path relative to the folder → text): each
/// folder with a `bundle.yaml` over `common/`. A folder whose `bundle.yaml` does not parse is
/// left out and its error returned; its other files are parsed when asked for.
fn load(folders: Vec<(String, BTreeMap<String, String>)>) -> (Vec<Bundle>, Vec<String>) {
    let common: BTreeMap<String, String> = folders
        .iter()
        .find(|(name, _)| name == COMMON)
        .map(|(_, files)| files.clone())
        .unwrap_or_default();
    let mut errors = Vec::new();
    let mut all: Vec<Bundle> = Vec::new();
    for (minor, own) in folders {
        let Some(text) = own.get("bundle.yaml") else {
            continue;
        };
        let manifest: BundleManifest = match serde_saphyr::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("charts/{minor}/bundle.yaml: {e}"));
                continue;
            }
        };
        let shared: std::collections::BTreeSet<String> = common
            .keys()
            .filter(|p| !own.contains_key(*p))
            .cloned()
            .collect();
        let mut files = common.clone();
        files.extend(own);
        // An empty file of the minor hides the common one (a template or values file this
        // minor does not have).
        files.retain(|path, text| {
            !(is_blank(text) && (path.ends_with(".yaml") || path.ends_with(".jinja")))
        });
        all.push(Bundle {
            minor,
            manifest,
            files,
            common: shared,
            parsed: Default::default(),
            mesh_schema: OnceLock::new(),
        });
    }
    all.sort_by_key(|b| Release::parse(&format!("{}.0", b.minor)));
    (all, errors)
}

/// Every bundled release, oldest first.
pub fn releases() -> Vec<Release> {
    bundles()
        .iter()
        .flat_map(|b| b.manifest.releases.iter().filter_map(|r| Release::parse(r)))
        .collect()
}

/// Resolves `spec.version` (`1.24` or `1.24.6`) to a bundled release and its bundle.
pub fn resolve(version: &str) -> Result<(Release, &'static Bundle), BundleError> {
    let version = version.trim().trim_start_matches('v');
    let parts: Vec<&str> = version.split('.').collect();
    let (major, minor_number) = match parts.as_slice() {
        [major, minor] | [major, minor, _]
            if parts
                .iter()
                .all(|p| !p.is_empty() && p.parse::<u32>().is_ok()) =>
        {
            (*major, *minor)
        }
        _ => {
            return Err(BundleError::BadVersion {
                found: version.to_string(),
            });
        }
    };
    let minor = format!("{major}.{minor_number}");
    let expected = || {
        let all: Vec<String> = releases().iter().map(|r| r.to_string()).collect();
        let minors: Vec<&str> = bundles().iter().map(|b| b.minor.as_str()).collect();
        format!("{} (or a minor: {})", all.join(", "), minors.join(", "))
    };
    let bundle =
        bundles()
            .iter()
            .find(|b| b.minor == minor)
            .ok_or_else(|| BundleError::UnknownVersion {
                found: version.to_string(),
                expected: expected(),
            })?;
    let release = if parts.len() == 2 {
        bundle
            .manifest
            .releases
            .iter()
            .filter_map(|r| Release::parse(r))
            .max()
    } else {
        bundle
            .manifest
            .releases
            .iter()
            .filter_map(|r| Release::parse(r))
            .find(|r| r.to_string() == version)
    };
    release
        .map(|r| (r, bundle))
        .ok_or_else(|| BundleError::UnknownVersion {
            found: version.to_string(),
            expected: expected(),
        })
}

/// The message for `spec.waypoints` when the Gateway API CRDs are not installed: which Gateway
/// API release each bundled minor expects.
pub fn missing_gateway_api_message() -> String {
    let versions: Vec<String> = bundles()
        .iter()
        .rev()
        .map(|b| format!("{} for Istio {}", b.manifest.gateway_api, b.minor))
        .collect();
    format!(
        "spec.waypoints needs the Gateway API CRDs (gateways.gateway.networking.k8s.io), which are \
         not installed; install the Gateway API standard channel ({}) or remove spec.waypoints",
        versions.join(", ")
    )
}

/// Every profile of any bundled minor, in the order first seen from the oldest minor (the CRD's
/// profile rule is made of them).
pub fn all_profiles() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for b in bundles() {
        for p in &b.manifest.profiles {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
    }
    out
}

/// Profiles by minor, for help texts and error messages.
pub fn profiles_by_minor() -> BTreeMap<String, Vec<String>> {
    bundles()
        .iter()
        .map(|b| (b.minor.clone(), b.profiles()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundle_loads_its_defaults_and_profiles() {
        assert_eq!(load_errors(), Vec::<String>::new());
        assert!(!bundles().is_empty());
        for b in bundles() {
            assert!(b.default_values().unwrap().is_object(), "{}", b.minor);
            // Every chart profile a bundle accepts has its layer (validate relies on it).
            for p in &b.manifest.chart_profiles {
                assert!(
                    b.layer(&format!("profile-{p}")).unwrap().is_some(),
                    "{} profile-{p}",
                    b.minor
                );
            }
            for p in b.profiles() {
                assert!(
                    b.file(&format!("profiles/{p}.yaml")).is_some(),
                    "charts/{}/bundle.yaml lists profile {p}, but there is no profiles/{p}.yaml \
                     in charts/{}/ or charts/{COMMON}/",
                    b.minor,
                    b.minor
                );
            }
        }
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it_never_a_panic() {
        let folder = |files: &[(&str, &str)]| {
            files
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let manifest = "releases: [\"9.1.0\"]\nhub: h\nprofiles: [default]\ngatewayApi: v1\n";
        let (ok, errors) = load(vec![
            (
                COMMON.into(),
                folder(&[
                    ("values/defaults/a.yaml", "a: 1\n"),
                    (
                        "meshconfig.yaml",
                        "root: M\nmessages: {M: {fields: {}}}\nenums: {}\n",
                    ),
                ]),
            ),
            ("9.1".into(), folder(&[("bundle.yaml", manifest)])),
            (
                "9.2".into(),
                folder(&[
                    ("bundle.yaml", manifest),
                    ("profiles/default.yaml", "a: [\n"),
                ]),
            ),
            (
                "9.3".into(),
                folder(&[
                    ("bundle.yaml", manifest),
                    ("values/defaults/b.yaml", "a: 2\n"),
                ]),
            ),
            ("9.4".into(), folder(&[("bundle.yaml", "releases: 1.0\n")])),
        ]);
        // A bundle.yaml that does not parse leaves its folder out.
        let minors: Vec<&str> = ok.iter().map(|b| b.minor.as_str()).collect();
        assert_eq!(minors, ["9.1", "9.2", "9.3"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("charts/9.4/bundle.yaml: "),
            "{errors:?}"
        );
        // Other files are errors naming the file when read, and in the bundle's problems.
        let [sound, bad_profile, bad_layer] = ok.as_slice() else {
            panic!("three bundles")
        };
        assert_eq!(sound.default_values(), Ok(serde_json::json!({"a": 1})));
        assert_eq!(sound.problems(), Vec::<String>::new());
        let e = bad_profile.yaml("profiles/default.yaml").unwrap_err();
        assert!(e.starts_with("charts/9.2/profiles/default.yaml: "), "{e}");
        assert_eq!(bad_profile.problems(), [e]);
        let e = bad_layer.default_values().unwrap_err();
        assert!(
            e.starts_with("charts/9.3/values/defaults/b.yaml: a is also set")
                && e.ends_with("layer defaults"),
            "{e}"
        );
        assert_eq!(bad_layer.problems(), [e]);
    }

    #[test]
    fn a_minor_file_replaces_or_hides_the_common_one() {
        assert!(is_blank("# 1.23 has no such file\n\n"));
        assert!(is_blank("{# not in 1.23 #}\n"));
        assert!(!is_blank("# a comment\nkey: value\n"));
        for b in bundles() {
            for (path, text) in b.files_under("templates") {
                assert!(
                    !is_blank(text),
                    "{}: hidden files are left out",
                    b.source(path)
                );
            }
        }
    }

    #[test]
    fn the_gateway_api_message_names_each_minor() {
        let m = missing_gateway_api_message();
        for b in bundles() {
            assert!(
                m.contains(&format!("{} for Istio {}", b.manifest.gateway_api, b.minor)),
                "{m}"
            );
        }
    }

    #[test]
    fn yaml_booleans_are_only_true_and_false() {
        let v = parse_yaml("a: y\nb: on\nc: true\n").unwrap();
        assert_eq!(v, serde_json::json!({"a": "y", "b": "on", "c": true}));
    }

    #[test]
    fn a_minor_resolves_to_its_newest_patch() {
        let (r, b) = resolve("1.24").unwrap();
        assert_eq!(r.to_string(), "1.24.6");
        assert_eq!(b.minor, "1.24");
        assert_eq!(resolve("1.23.2").unwrap().0.to_string(), "1.23.2");
    }

    #[test]
    fn unknown_versions_name_what_exists() {
        let err = resolve("1.99.1").unwrap_err().to_string();
        assert!(err.contains("1.24.6") && err.contains("1.99.1"), "{err}");
        assert!(matches!(
            resolve("one").unwrap_err(),
            BundleError::BadVersion { .. }
        ));
        assert!(resolve("1.24.9").is_err());
    }
}
