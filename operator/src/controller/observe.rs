//! observe: what the cluster holds for an install, read from the watch caches.
//!
//! Every kind of the table of kinds is watched with a label selector on what this operator
//! manages, so the caches hold our objects and nothing else (10,000 unrelated ConfigMaps cost
//! nothing); namespaces are watched as metadata only. A no-op reconcile reads only these caches
//! and sends no request. A key missing from its cache is read from the API server: the object
//! may exist without our labels (someone else's, or an install made by istioctl or Helm that is
//! being taken over), and the ownership rules must see it as it is.

use super::{Context, MANAGED_SELECTOR};
use crate::api::IstioInstall;
use crate::apply::{ApplyError, api_resource, labels_of, typed};
use crate::decide::Observed;
use crate::kinds::Kind;
use crate::plan::{ObjectKey, Plan};
use crate::render::INSTALL_LABEL;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::HashMap;

/// The watch caches: our objects by kind, and every namespace's metadata.
pub struct Caches {
    /// By kind (kinds are unique in the table).
    objects: HashMap<&'static str, (ApiResource, Store<DynamicObject>)>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
}

/// A watch stream of one kind, feeding its cache; the controller maps its events to installs.
pub type KindStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static>>;

/// How often a kind the API server did not serve at start (an optional CRD such as the Gateway
/// API's) is looked for again; its watch starts once it is served.
const LOOK_FOR_KIND_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Caches {
    /// Starts the namespace cache (driven by its own task) and returns, for each kind, the
    /// stream that fills its cache: the caller drives those (the controller's triggers). A kind
    /// in `later` is not served yet: its stream stays empty until its watch can start.
    pub fn start(
        client: &Client,
        kinds: &[&'static Kind],
        later: &[&'static Kind],
    ) -> (Caches, Vec<(ApiResource, KindStream)>) {
        let mut objects = HashMap::new();
        let mut streams = Vec::new();
        for kind in kinds {
            let ar = api_resource(kind);
            let writer = Writer::new(ar.clone());
            objects.insert(kind.kind, (ar.clone(), writer.as_reader()));
            streams.push((ar.clone(), watch(client, &ar, writer)));
        }
        for kind in later {
            let ar = api_resource(kind);
            let writer = Writer::new(ar.clone());
            objects.insert(kind.kind, (ar.clone(), writer.as_reader()));
            let (tx, rx) = futures::channel::mpsc::unbounded();
            let client = client.clone();
            let watched = ar.clone();
            tokio::spawn(async move {
                while !served(&client, &watched).await {
                    tokio::time::sleep(LOOK_FOR_KIND_EVERY).await;
                }
                tracing::info!(
                    kind = watched.kind,
                    "now served by the API server; watching it"
                );
                let mut events = watch(&client, &watched, writer);
                while let Some(event) = events.next().await {
                    if tx.unbounded_send(event).is_err() {
                        return;
                    }
                }
            });
            streams.push((ar, rx.boxed()));
        }
        let writer = Writer::<PartialObjectMeta<Namespace>>::default();
        let namespaces = writer.as_reader();
        let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().any_semantic()),
        )
        .default_backoff()
        .touched_objects();
        tokio::spawn(stream.for_each(|_| std::future::ready(())));
        (
            Caches {
                objects,
                namespaces,
            },
            streams,
        )
    }

    /// The cached object of `key`, as the API server would return it.
    fn cached(&self, key: &ObjectKey) -> Option<Value> {
        let (ar, store) = self.objects.get(key.kind.as_str())?;
        if ar.api_version != key.api_version {
            return None;
        }
        let mut r = ObjectRef::new_with(&key.name, ar.clone());
        if let Some(ns) = &key.namespace {
            r = r.within(ns);
        }
        store.get(&r).map(|o| as_value(&o, ar))
    }

    /// Objects labelled as `install`'s and pointing at its UID (labels alone can be copied
    /// onto anyone's object), from every cache, but those of `planned` (prune only looks at
    /// what the plan does not have, and turning a cached object into JSON is not free).
    fn owned(&self, install: &str, uid: &str, planned: &HashMap<ObjectKey, Value>) -> Vec<Value> {
        let mut out = Vec::new();
        for kind in crate::kinds::prunable() {
            let Some((ar, store)) = self.objects.get(kind.kind) else {
                continue;
            };
            for o in store.state() {
                let ours = o.labels().get(INSTALL_LABEL).is_some_and(|l| l == install)
                    && o.owner_references().iter().any(|r| r.uid == uid);
                let key = ObjectKey {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                    namespace: o.namespace(),
                    name: o.name_any(),
                };
                if ours && !planned.contains_key(&key) {
                    out.push(as_value(&o, ar));
                }
            }
        }
        out
    }

    /// The labels of a namespace, if the cache has it.
    fn namespace_labels(&self, name: &str) -> Option<Value> {
        self.namespaces
            .get(&ObjectRef::new(name))
            .map(|ns| serde_json::to_value(ns.labels()).unwrap_or_default())
    }

    /// Namespaces whose labels say `install` enrolled them.
    fn enrolled_by(&self, install: &str) -> Vec<(String, Value)> {
        self.namespaces
            .state()
            .iter()
            .filter(|ns| {
                ns.labels()
                    .get(crate::render::waypoints::ENROLLED_BY_LABEL)
                    .is_some_and(|l| l == install)
            })
            .map(|ns| {
                (
                    ns.name_any(),
                    serde_json::to_value(ns.labels()).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// The watch of one kind, on what this operator manages, filling `writer`'s cache.
fn watch(client: &Client, ar: &ApiResource, writer: Writer<DynamicObject>) -> KindStream {
    let config = watcher::Config::default()
        .labels(MANAGED_SELECTOR)
        .any_semantic();
    let api = Api::<DynamicObject>::all_with(client.clone(), ar);
    reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .boxed()
}

/// Whether the API server serves a kind now (one discovery request on the watch client).
async fn served(client: &Client, ar: &ApiResource) -> bool {
    let gvk = kube::api::GroupVersionKind::gvk(&ar.group, &ar.version, &ar.kind);
    // The watch client has no read timeout of its own.
    let lookup = kube::discovery::pinned_kind(client, &gvk);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(30), lookup).await,
        Ok(Ok(_))
    )
}

/// A cached object as JSON with its apiVersion and kind (list answers leave them out).
fn as_value(o: &DynamicObject, ar: &ApiResource) -> Value {
    typed(
        serde_json::to_value(o).unwrap_or_default(),
        &ar.api_version,
        &ar.kind,
    )
}

/// What the cluster holds for an install's plan: its planned objects, the namespaces it
/// needs and the waypoints enrol, and what it owns.
pub async fn observe(
    ii: &IstioInstall,
    plan: &Plan,
    enrolments: &[(String, Value)],
    ctx: &Context,
) -> Result<Observed, ApplyError> {
    let caches = &ctx.caches;
    let mut observed = Observed::default();
    let mut misses = Vec::new();
    for key in plan.keys() {
        match caches.cached(&key) {
            Some(live) => {
                observed.live.insert(key, live);
            }
            None => misses.push(key),
        }
    }
    let lives = futures::future::try_join_all(misses.iter().map(|k| ctx.applier.get(k))).await?;
    for (key, live) in misses.into_iter().zip(lives) {
        if let Some(live) = live {
            observed.live.insert(key, live);
        }
    }
    let wanted = plan
        .namespaces
        .iter()
        .chain(enrolments.iter().map(|(ns, _)| ns));
    for ns in wanted {
        let labels = match caches.namespace_labels(ns) {
            Some(labels) => Some(labels),
            None => ctx
                .applier
                .get(&namespace_key(ns))
                .await?
                .map(|live| labels_of(&live)),
        };
        if let Some(labels) = labels {
            observed.namespaces.insert(ns.clone(), labels);
        }
    }
    let name = ii.name_any();
    for (ns, labels) in caches.enrolled_by(&name) {
        observed.namespaces.entry(ns).or_insert(labels);
    }
    observed.owned = caches.owned(&name, &ii.uid().unwrap_or_default(), &observed.live);
    Ok(observed)
}

fn namespace_key(name: &str) -> ObjectKey {
    ObjectKey {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: None,
        name: name.into(),
    }
}

/// The live objects this install owns, listed from the API server (uninstall): labelled as its own *and* pointing at its UID (labels
/// alone can be copied onto anyone's object).
pub async fn list_owned(ii: &IstioInstall, ctx: &Context) -> Result<Vec<Value>, ApplyError> {
    let uid = ii.uid().unwrap_or_default();
    let selector = format!("{MANAGED_SELECTOR},{INSTALL_LABEL}={}", ii.name_any());
    let selector = selector.as_str();
    let lists = futures::future::join_all(
        crate::apply::prunable_kinds().map(|(api_version, kind)| async move {
            (kind, ctx.applier.list(api_version, kind, selector).await)
        }),
    )
    .await;
    let mut out = Vec::new();
    for (kind, list) in lists {
        // A list that fails (forbidden included) is an error: reading it as "nothing owned"
        // would end an uninstall with objects left behind.
        match list {
            Ok(items) => out.extend(items),
            Err(e) => {
                tracing::warn!(kind, error = %e, "cannot list owned objects");
                return Err(e);
            }
        }
    }
    out.retain(|o| crate::plan::owned_by(o, &uid));
    Ok(out)
}

/// Namespaces the install's enrolment labels are on, listed from the API server (uninstall).
pub async fn list_enrolled(ii: &IstioInstall, ctx: &Context) -> Result<Vec<String>, ApplyError> {
    let selector = format!(
        "{}={}",
        crate::render::waypoints::ENROLLED_BY_LABEL,
        ii.name_any()
    );
    let listed = ctx.applier.list("v1", "Namespace", &selector).await?;
    Ok(listed
        .iter()
        .filter_map(|ns| {
            crate::json::at(ns, &["metadata", "name"])
                .as_str()
                .map(String::from)
        })
        .collect())
}
