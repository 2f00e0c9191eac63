//! Deleting an IstioInstall uninstalls it in reverse install order (waypoints, gateways,
//! ztunnel, cni, istiod, base), one component per pass, then releases the finalizer.
//!
//! It always completes: deletion does not wait for health, and an object that is already being
//! deleted (say, held by someone else's finalizer) counts as gone. CRDs are never deleted, so
//! users' Istio configuration survives an uninstall.

use super::events::EventType;
use super::{Context, Error, FINALIZER, component_rank, enrol_namespaces, finish, list_owned};
use crate::api::{IGNORE_ANNOTATION, IstioInstall};
use crate::json::at;
use crate::plan::{ObjectKey, is_ignored};
use crate::render::COMPONENT_LABEL;
use crate::status::{Outcome, State};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use std::time::Duration;

pub(super) async fn run(ii: &IstioInstall, ctx: &Context) -> Result<Action, Error> {
    if !ii.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let owned = match list_owned(ii, ctx).await {
        Ok(owned) => owned,
        Err(e) => {
            // Nothing is deleted and the finalizer stays: an unreadable kind is not an empty one.
            let outcome = Outcome {
                state: State::Stalled {
                    reason: "UninstallBlocked".into(),
                    message: format!(
                        "cannot list what the install owns, so the uninstall waits (the finalizer {FINALIZER} stays): {e}"
                    ),
                },
                desired_version: None,
                components: vec![],
            };
            finish(ii, ctx, outcome).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    // Objects marked to be left alone stay, and so do those already on their way out.
    let (kept, owned): (Vec<_>, Vec<_>) = owned
        .into_iter()
        .filter(|o| at(o, &["metadata", "deletionTimestamp"]).is_null())
        .partition(is_ignored);
    let component = |o: &serde_json::Value| {
        at(o, &["metadata", "labels", COMPONENT_LABEL])
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let last = owned.iter().map(|o| component_rank(&component(o))).max();
    if let Some(rank) = last {
        let doomed: Vec<_> = owned
            .iter()
            .filter(|o| component_rank(&component(o)) == rank)
            .collect();
        let name = doomed.first().map(|o| component(o)).unwrap_or_default();
        for o in &doomed {
            let key = ObjectKey::of(o);
            tracing::info!(object = %key, "uninstalling");
            ctx.metrics.writes.inc();
            ctx.applier.delete(&key).await?;
        }
        let message = format!("removing {name} ({} objects)", doomed.len());
        super::publish(ctx, ii, EventType::Normal, "Uninstalling", message.clone()).await;
        let outcome = Outcome {
            state: State::Uninstalling { message },
            desired_version: None,
            components: vec![],
        };
        finish(ii, ctx, outcome).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // A kept object loses its owner reference, or the garbage collector would delete it once
    // the IstioInstall is gone.
    let uid = ii.uid().unwrap_or_default();
    for o in &kept {
        let key = ObjectKey::of(o);
        tracing::info!(object = %key, "kept (annotation {IGNORE_ANNOTATION}); releasing it");
        ctx.metrics.writes.inc();
        ctx.applier.release(o, &uid).await?;
    }
    enrol_namespaces(&[], &ii.name_any(), ctx).await?;
    let api: Api<IstioInstall> = Api::all(ctx.applier.client().clone());
    let finalizers: Vec<String> = ii
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ii.resource_version()}});
    ctx.metrics.writes.inc();
    match api
        .patch(
            &ii.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(install = %ii.name_any(), "uninstalled");
    Ok(Action::await_change())
}
