//! Deleting an IstioInstall uninstalls it in reverse install order (waypoints, gateways,
//! ztunnel, cni, istiod, base), one component per pass, then releases the finalizer; what each
//! pass does is decided by `decide::uninstall`.
//!
//! It always completes: deletion does not wait for health, and an object that is already being
//! deleted (say, held by someone else's finalizer) counts as gone. CRDs are never deleted, so
//! users' Istio configuration survives an uninstall. What the install owns is listed from the
//! API server, not from the caches: a cache that has not caught up must not end an uninstall
//! with objects left behind.

use super::observe::{list_enrolled, list_owned};
use super::{Context, Error, FINALIZER, finish};
use crate::api::{IGNORE_ANNOTATION, IstioInstall};
use crate::apply::events::EventType;
use crate::decide::{self, UninstallStep};
use crate::plan::ObjectKey;
use crate::status::{Outcome, State};
use kube::ResourceExt;
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
    match decide::uninstall(owned) {
        UninstallStep::Delete { component, keys } => {
            for key in &keys {
                tracing::info!(object = %key, "uninstalling");
                ctx.applier.delete(key).await?;
            }
            let message = format!("removing {component} ({} objects)", keys.len());
            super::publish(ctx, ii, EventType::Normal, "Uninstalling", message.clone()).await;
            let outcome = Outcome {
                state: State::Uninstalling { message },
                desired_version: None,
                components: vec![],
            };
            finish(ii, ctx, outcome).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        UninstallStep::Finish { release } => {
            // A kept object loses its owner reference, or the garbage collector would delete
            // it once the IstioInstall is gone.
            let uid = ii.uid().unwrap_or_default();
            for o in &release {
                let key = ObjectKey::of(o);
                tracing::info!(object = %key, "kept (annotation {IGNORE_ANNOTATION}); releasing it");
                ctx.applier.release(o, &uid).await?;
            }
            for ns in list_enrolled(ii, ctx).await? {
                ctx.applier.set_namespace_labels(&ns, &json!({})).await?;
            }
            ctx.applier.remove_finalizer(ii, FINALIZER).await?;
            tracing::info!(install = %ii.name_any(), "uninstalled");
            Ok(Action::await_change())
        }
    }
}
