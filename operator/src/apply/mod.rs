//! apply: the only module that writes to the cluster. Server-side apply under one field
//! manager (forced: we are the owner of what we render), deletes, and the reads the planner
//! needs. Every write goes through here, so it is counted here.

use crate::api::MANAGER;
use crate::plan::ObjectKey;
use crate::render::is_cluster_scoped;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams,
    PropagationPolicy,
};
use kube::{Client, discovery};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// The API server's own message (not the whole Status dump), bounded for status conditions.
fn api_message(e: &kube::Error) -> String {
    let mut m = match e {
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
    writes: AtomicU64,
}

impl Applier {
    pub fn new(client: Client) -> Applier {
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
            writes: AtomicU64::new(0),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Write requests sent so far (applies and deletes).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    async fn resource_for(&self, api_version: &str, kind: &str) -> Result<ApiResource, ApplyError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.resources.lock().expect("not poisoned").get(&key) {
            return Ok(r.clone());
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (ar, _) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|_| ApplyError::UnknownKind(format!("{api_version} {kind}")))?;
        self.resources
            .lock()
            .expect("not poisoned")
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
        let obj = api
            .get_opt(&key.name)
            .await
            .map_err(|source| ApplyError::Kube {
                key: key.to_string(),
                source,
            })?;
        Ok(obj.map(|o| serde_json::to_value(o).expect("objects serialize")))
    }

    /// Server-side apply of a whole object under our field manager.
    pub async fn apply(&self, obj: &Value) -> Result<Value, ApplyError> {
        let key = ObjectKey::of(obj);
        let api = self.api(&key).await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let params = PatchParams::apply(MANAGER).force();
        let out = api
            .patch(&key.name, &params, &Patch::Apply(obj))
            .await
            .map_err(|source| ApplyError::Kube {
                key: key.to_string(),
                source,
            })?;
        Ok(serde_json::to_value(out).expect("objects serialize"))
    }

    /// Takes the owner reference to `owner_uid` off a live object (the rest of it stays as it
    /// is); the resourceVersion makes it fail rather than clobber a concurrent change.
    pub async fn release(&self, live: &Value, owner_uid: &str) -> Result<(), ApplyError> {
        let key = ObjectKey::of(live);
        let api = self.api(&key).await?;
        let refs: Vec<&Value> = live["metadata"]["ownerReferences"]
            .as_array()
            .map(|refs| refs.iter().filter(|r| r["uid"] != owner_uid).collect())
            .unwrap_or_default();
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": live["metadata"]["resourceVersion"],
        }});
        self.writes.fetch_add(1, Ordering::Relaxed);
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
        self.writes.fetch_add(1, Ordering::Relaxed);
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
                .map(|o| {
                    let mut v = serde_json::to_value(o).expect("objects serialize");
                    v["apiVersion"] = Value::String(api_version.to_string());
                    v["kind"] = Value::String(kind.to_string());
                    v
                })
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
