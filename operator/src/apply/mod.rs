//! apply: the only module that writes to the cluster: server-side apply under one field
//! manager (forced: we are the owner of what we render), deletes, namespace labels, the
//! IstioInstall's finalizer and status, its Events (`events.rs`), and the reads a cache cannot
//! answer. Every write goes through here, so it is counted here (`write_requests_total`;
//! Events apart).

pub mod events;

use crate::api::{IstioInstall, IstioInstallStatus, MANAGER};
use crate::json::at;
use crate::plan::ObjectKey;
use crate::render::is_cluster_scoped;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams,
    PropagationPolicy,
};
use kube::{Client, Resource, ResourceExt, discovery};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;

/// Field manager of the namespace enrolment labels (kept apart so removing them is exact).
const ENROLLMENT_MANAGER: &str = "istio-install-operator-enrollment";

/// Kinds listed when pruning and uninstalling (everything we may have created but CRDs and
/// namespaces).
pub fn prunable_kinds() -> impl Iterator<Item = (&'static str, &'static str)> {
    crate::kinds::prunable().map(|k| (k.api_version, k.kind))
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{key}: {}", api_message(source))]
    Kube {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}: the API server does not serve this kind (is its CRD installed?)")]
    UnknownKind(String),
    #[error("{0}: cannot read the API server's answer: {1}")]
    Answer(String, String),
}

/// The API server's own message (not the whole Status dump), bounded for status conditions.
fn api_message(e: &kube::Error) -> String {
    let mut m = match e {
        // APF's 429 body is plain text, so kube's reason reads "Failed to parse error data".
        kube::Error::Api(s) if s.code == 429 => format!(
            "throttled by the API server (429 Too Many Requests): {}",
            s.message.trim()
        ),
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    };
    if m.len() > 600 {
        let cut = (0..=600)
            .rev()
            .find(|i| m.is_char_boundary(*i))
            .unwrap_or(0);
        m.truncate(cut);
        m.push('…');
    }
    m
}

impl ApplyError {
    /// Whether retrying later can help (as opposed to an invalid object or a missing API).
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Kube {
                source: kube::Error::Api(s),
                ..
            } => !(s.code == 422 || s.code == 400 || s.code == 403 || s.code == 404),
            ApplyError::Kube { .. } => true,
            ApplyError::UnknownKind(_) => false,
            ApplyError::Answer(..) => true,
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApplyError::Kube { source: kube::Error::Api(s), .. } if s.code == 404)
    }
    pub fn is_forbidden(&self) -> bool {
        matches!(self, ApplyError::Kube { source: kube::Error::Api(s), .. } if s.code == 403)
    }
}

/// Talks to the API server on behalf of the reconciler.
pub struct Applier {
    client: Client,
    resources: Mutex<HashMap<(String, String), ApiResource>>,
    writes: Counter,
}

impl Applier {
    /// `writes` counts every write request this applier sends.
    pub fn new(client: Client, writes: Counter) -> Applier {
        // The table's kinds need no discovery; optional ones are looked up, since their CRD
        // may be missing (then the kind is reported as not served).
        let resources = crate::kinds::KINDS
            .iter()
            .filter(|k| !k.optional)
            .map(|k| {
                (
                    (k.api_version.to_string(), k.kind.to_string()),
                    resource(k.api_version, k.kind, k.plural),
                )
            })
            .collect();
        Applier {
            client,
            resources: Mutex::new(resources),
            writes,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn resource_for(&self, api_version: &str, kind: &str) -> Result<ApiResource, ApplyError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self
            .resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(r.clone());
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (ar, _) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|_| ApplyError::UnknownKind(format!("{api_version} {kind}")))?;
        self.resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, ar.clone());
        Ok(ar)
    }

    async fn api(&self, key: &ObjectKey) -> Result<Api<DynamicObject>, ApplyError> {
        let ar = self.resource_for(&key.api_version, &key.kind).await?;
        Ok(match &key.namespace {
            Some(ns) if !is_cluster_scoped(&key.kind) => {
                Api::namespaced_with(self.client.clone(), ns, &ar)
            }
            _ => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// The live object, or `None` when it does not exist.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, ApplyError> {
        let api = self.api(key).await?;
        match api.get_opt(&key.name).await {
            Ok(obj) => Ok(obj.and_then(|o| serde_json::to_value(o).ok())),
            Err(source) => Err(self.failed(key, source)),
        }
    }

    /// The error of a request about `key`. A 404 that is not an object's NotFound means the
    /// kind itself is gone (a CRD was deleted): its API resource is forgotten, so the next
    /// `serves` asks the API server again instead of answering from what it once found.
    fn failed(&self, key: &ObjectKey, source: kube::Error) -> ApplyError {
        if let kube::Error::Api(s) = &source
            && s.code == 404
            && s.reason != "NotFound"
        {
            self.resources
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(key.api_version.clone(), key.kind.clone()));
            return ApplyError::UnknownKind(format!("{} {}", key.api_version, key.kind));
        }
        ApplyError::Kube {
            key: key.to_string(),
            source,
        }
    }

    /// Server-side apply of a whole object under our field manager.
    pub async fn apply(&self, obj: &Value) -> Result<Value, ApplyError> {
        let key = ObjectKey::of(obj);
        let api = self.api(&key).await?;
        self.writes.inc();
        let params = PatchParams::apply(MANAGER).force();
        let out = api
            .patch(&key.name, &params, &Patch::Apply(obj))
            .await
            .map_err(|source| self.failed(&key, source))?;
        serde_json::to_value(out).map_err(|e| ApplyError::Answer(key.to_string(), e.to_string()))
    }

    /// Takes the owner reference to `owner_uid` off a live object (the rest of it stays as it
    /// is); the resourceVersion makes it fail rather than clobber a concurrent change.
    pub async fn release(&self, live: &Value, owner_uid: &str) -> Result<(), ApplyError> {
        let key = ObjectKey::of(live);
        let api = self.api(&key).await?;
        let refs: Vec<&Value> = at(live, &["metadata", "ownerReferences"])
            .as_array()
            .map(|refs| refs.iter().filter(|r| r["uid"] != owner_uid).collect())
            .unwrap_or_default();
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": at(live, &["metadata", "resourceVersion"]),
        }});
        self.writes.inc();
        api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| ApplyError::Kube {
                key: key.to_string(),
                source,
            })?;
        Ok(())
    }

    /// Deletes an object (background propagation); a missing object is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), ApplyError> {
        let api = self.api(key).await?;
        self.writes.inc();
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match api.delete(&key.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(ApplyError::Kube {
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Every object of a kind carrying `selector`, cluster-wide. Kinds the server does not serve
    /// (e.g. Gateway without the Gateway API CRDs) give an empty list.
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        selector: &str,
    ) -> Result<Vec<Value>, ApplyError> {
        let ar = match self.resource_for(api_version, kind).await {
            Ok(ar) => ar,
            Err(ApplyError::UnknownKind(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        match api.list(&ListParams::default().labels(selector)).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .map(|v| typed(v, api_version, kind))
                .collect()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(source) => Err(ApplyError::Kube {
                key: format!("{kind} (list)"),
                source,
            }),
        }
    }

    /// Whether the API server serves a kind (e.g. the Gateway API's Gateway).
    pub async fn serves(&self, api_version: &str, kind: &str) -> bool {
        self.resource_for(api_version, kind).await.is_ok()
    }
}

impl Applier {
    /// Creates a namespace (a component's, when missing). Namespaces are never deleted.
    pub async fn create_namespace(&self, name: &str) -> Result<Value, ApplyError> {
        self.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .await
    }

    /// Sets the enrolment labels on a namespace under their own field manager; `labels` empty
    /// takes off exactly the labels set before, and nothing else.
    pub async fn set_namespace_labels(&self, name: &str, labels: &Value) -> Result<(), ApplyError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let mut patch =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if labels.as_object().is_some_and(|l| !l.is_empty())
            && let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("labels".into(), labels.clone());
        }
        self.writes.inc();
        api.patch(
            name,
            &PatchParams::apply(ENROLLMENT_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| ApplyError::Kube {
            key: format!("Namespace {name}"),
            source,
        })?;
        Ok(())
    }

    /// Adds `finalizer` to an IstioInstall (the resourceVersion makes it fail rather than
    /// clobber a concurrent change).
    pub async fn add_finalizer(
        &self,
        ii: &IstioInstall,
        finalizer: &str,
    ) -> Result<(), ApplyError> {
        let mut finalizers = ii.finalizers().to_vec();
        finalizers.push(finalizer.to_string());
        self.patch_finalizers(ii, finalizers).await
    }

    /// Removes `finalizer` from an IstioInstall; one already gone is not an error.
    pub async fn remove_finalizer(
        &self,
        ii: &IstioInstall,
        finalizer: &str,
    ) -> Result<(), ApplyError> {
        let finalizers = ii
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect();
        match self.patch_finalizers(ii, finalizers).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    async fn patch_finalizers(
        &self,
        ii: &IstioInstall,
        finalizers: Vec<String>,
    ) -> Result<(), ApplyError> {
        let api: Api<IstioInstall> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": ii.resource_version()}});
        self.writes.inc();
        api.patch(
            &ii.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| ApplyError::Kube {
            key: format!("IstioInstall {}", ii.name_any()),
            source,
        })?;
        Ok(())
    }

    /// Server-side apply of an IstioInstall's status.
    pub async fn write_status(
        &self,
        ii: &IstioInstall,
        status: &IstioInstallStatus,
    ) -> Result<(), ApplyError> {
        let api: Api<IstioInstall> = Api::all(self.client.clone());
        let patch = json!({
            "apiVersion": IstioInstall::api_version(&()),
            "kind": IstioInstall::kind(&()),
            "status": status,
        });
        self.writes.inc();
        api.patch_status(
            &ii.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| ApplyError::Kube {
            key: format!("IstioInstall {} (status)", ii.name_any()),
            source,
        })?;
        Ok(())
    }
}

/// An object read from a list or a cache, with the apiVersion and kind those leave out.
pub fn typed(mut v: Value, api_version: &str, kind: &str) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(api_version.to_string()));
        o.insert("kind".into(), Value::String(kind.to_string()));
    }
    v
}

/// The labels of a live object (`{}` when it has none).
pub fn labels_of(live: &Value) -> Value {
    match at(live, &["metadata", "labels"]) {
        Value::Null => json!({}),
        labels => labels.clone(),
    }
}

/// The API resource of a row of the table of kinds.
pub fn api_resource(kind: &crate::kinds::Kind) -> ApiResource {
    resource(kind.api_version, kind.kind, kind.plural)
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}
