//! The decision core over observed states, one situation per test: no cluster, no clock.

use super::*;
use crate::bundle::Release;
use crate::plan::claims::{Held, OtherInstallClaims};
use crate::plan::{Owner, plan};
use crate::render::{COMPONENT_LABEL, INSTALL_LABEL, RenderedObject};
use serde_json::json;
use std::sync::Arc;

const INSTALL: &str = "mesh";
const UID: &str = "uid-mesh";

fn object(kind: &str, name: &str, component: &str) -> Value {
    let api_version = match kind {
        "Deployment" | "DaemonSet" => "apps/v1",
        _ => "v1",
    };
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "istio-system",
            "labels": {
                "app.kubernetes.io/managed-by": crate::api::MANAGER,
                INSTALL_LABEL: INSTALL,
                COMPONENT_LABEL: component,
            },
        },
        "spec": {"replicas": 1},
    })
}

/// base (a ConfigMap), pilot (ConfigMap + Deployment), ztunnel (DaemonSet), in install order.
fn the_plan() -> Plan {
    let rendered = [
        (
            ComponentKind::Base,
            "base",
            object("ConfigMap", "istio-ca-root", "base"),
        ),
        (
            ComponentKind::Pilot,
            "pilot",
            object("ConfigMap", "istio", "pilot"),
        ),
        (
            ComponentKind::Pilot,
            "pilot",
            object("Deployment", "istiod", "pilot"),
        ),
        (
            ComponentKind::Ztunnel,
            "ztunnel",
            object("DaemonSet", "ztunnel", "ztunnel"),
        ),
    ]
    .into_iter()
    .map(|(component, name, object)| RenderedObject {
        component,
        component_name: name.into(),
        object,
    })
    .collect();
    plan(
        rendered,
        &Owner {
            api_version: "istioinstall.io/v1alpha1".into(),
            kind: "IstioInstall".into(),
            name: INSTALL.into(),
            uid: UID.into(),
        },
    )
}

/// The object as the API server would hold it after our apply, rolled out or not.
fn live(desired: &Value, rolled_out: bool) -> Value {
    let mut live = desired.clone();
    plan::stamp_intent(&mut live);
    live["metadata"]["generation"] = json!(1);
    live["metadata"]["uid"] = json!(format!("uid-{}", desired["metadata"]["name"]));
    let n = i64::from(rolled_out);
    live["status"] = match desired["kind"].as_str() {
        Some("Deployment") => {
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": n, "availableReplicas": n})
        }
        Some("DaemonSet") => {
            json!({"observedGeneration": 1, "desiredNumberScheduled": 1, "updatedNumberScheduled": n, "numberAvailable": n})
        }
        _ => Value::Null,
    };
    live
}

/// Everything of the plan live and rolled out, the namespace there.
fn converged(plan: &Plan) -> Observed {
    let mut observed = Observed::default();
    for o in plan.steps.iter().flat_map(|s| &s.objects) {
        observed.live.insert(ObjectKey::of(o), live(o, true));
        observed.owned.push(live(o, true));
    }
    observed.namespaces.insert("istio-system".into(), json!({}));
    observed
}

struct Case {
    plan: Plan,
    direction: Direction,
    release: &'static str,
    claims: Claims,
    enrolments: Vec<(String, Value)>,
    missing_gateway_api: Option<&'static str>,
}

impl Case {
    fn new() -> Case {
        Case {
            plan: the_plan(),
            direction: Direction::Steady,
            release: "1.24.6",
            claims: Claims::default(),
            enrolments: vec![],
            missing_gateway_api: None,
        }
    }
    fn decide(&self, observed: &Observed) -> Decision {
        decide(
            &Input {
                install: INSTALL,
                uid: UID,
                plan: &self.plan,
                release: self.release,
                direction: &self.direction,
                missing_gateway_api: self.missing_gateway_api,
                enrolments: &self.enrolments,
                claims: &self.claims,
            },
            observed,
        )
    }
}

fn writes(d: Decision) -> Writes {
    match d {
        Decision::Apply(w) => w,
        other => panic!("expected writes, got {other:#?}"),
    }
}

fn settled(d: Decision) -> Settlement {
    match d {
        Decision::Settle(s) => s,
        other => panic!("expected a settlement, got {other:#?}"),
    }
}

fn names(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or_default())
        .collect()
}

/// Runs the controller's loop against an API server that accepts every write and answers with
/// the object (rolled out when `rolled_out`): the writes in order, and how it settles.
fn run_loop(case: &Case, mut observed: Observed, rolled_out: bool) -> (Vec<String>, Settlement) {
    let mut written = Vec::new();
    for _ in 0..10 {
        match case.decide(&observed) {
            Decision::Apply(w) => {
                observed.applied.insert(w.step);
                for ns in w.namespaces {
                    observed.namespaces.insert(ns, json!({}));
                }
                for o in w.objects {
                    written.push(
                        o["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                    observed
                        .live
                        .insert(ObjectKey::of(&o), live(&o, rolled_out));
                }
            }
            Decision::Settle(s) => return (written, s),
        }
    }
    panic!("the decision loop did not settle");
}

#[test]
fn fresh_install_applies_in_order_and_waits_for_each_rollout() {
    let case = Case::new();
    let first = writes(case.decide(&Observed::default()));
    assert_eq!(first.step, 0);
    assert_eq!(first.namespaces, ["istio-system"], "namespaces come first");
    assert_eq!(names(&first.objects), ["istio-ca-root"]);

    // istiod answers "not rolled out yet": ztunnel waits for it.
    let (written, s) = run_loop(&case, Observed::default(), false);
    assert_eq!(written, ["istio-ca-root", "istio", "istiod"]);
    assert!(
        matches!(&s.outcome.state, State::Progressing { reason, message }
        if reason == "RollingOut" && message.starts_with("pilot: Deployment istio-system/istiod"))
    );
    assert_eq!(s.next, Next::After(WHILE_PROGRESSING));
    let ztunnel = &s.outcome.components[2];
    assert_eq!((ztunnel.version.as_deref(), ztunnel.ready), (None, false));
    assert_eq!(ztunnel.message.as_deref(), Some("waiting for pilot"));
    assert!(s.prunes.is_empty(), "nothing is pruned while rolling out");

    // Every rollout is immediate: all of it in one reconcile, Ready.
    let (written, s) = run_loop(&case, Observed::default(), true);
    assert_eq!(written, ["istio-ca-root", "istio", "istiod", "ztunnel"]);
    assert_eq!(s.outcome.state, State::Ready);
    assert!(
        s.outcome
            .components
            .iter()
            .all(|c| c.ready && c.version.as_deref() == Some("1.24.6"))
    );
}

#[test]
fn no_op_writes_nothing_and_stays_ready() {
    let case = Case::new();
    let s = settled(case.decide(&converged(&case.plan)));
    assert_eq!(s.outcome.state, State::Ready);
    assert_eq!(s.next, Next::After(WHEN_READY));
    assert!(s.prunes.is_empty() && s.enrol.is_empty() && s.unenrol.is_empty());
}

#[test]
fn drift_rewrites_only_the_component_that_drifted() {
    let case = Case::new();
    let mut observed = converged(&case.plan);
    let key = ObjectKey::of(&case.plan.steps[1].objects[0]);
    if let Some(cm) = observed.live.get_mut(&key) {
        cm["data"] = json!({"mesh": "edited"});
    }
    // Our ConfigMap has no data at all, so a field we do not set is not drift...
    assert!(matches!(case.decide(&observed), Decision::Settle(_)));
    // ...but a field we set that someone changed is.
    let mut case = Case::new();
    case.plan.steps[1].objects[0]["data"] = json!({"mesh": "ours"});
    let w = writes(case.decide(&observed));
    assert_eq!((w.step, names(&w.objects)), (1, vec!["istio"]));
    assert!(w.namespaces.is_empty());
    // A deleted object is drift too.
    let mut observed = converged(&case.plan);
    observed
        .live
        .remove(&ObjectKey::of(&case.plan.steps[2].objects[0]));
    let w = writes(case.decide(&observed));
    assert_eq!((w.step, names(&w.objects)), (2, vec!["ztunnel"]));
}

#[test]
fn a_contested_object_stops_the_install_before_writing_it() {
    let mut case = Case::new();
    let mut observed = converged(&case.plan);
    let key = ObjectKey::of(&case.plan.steps[1].objects[1]);
    let istiod = observed.live.get_mut(&key).expect("planned");
    istiod["metadata"]["labels"][INSTALL_LABEL] = json!("other");
    istiod["spec"]["replicas"] = json!(3);
    case.claims = Claims::new(vec![OtherInstallClaims {
        name: "other".into(),
        created: 0,
        deleting: false,
        held: Arc::new(Held {
            components: Some(vec![]),
            objects: Some([key.clone()].into()),
        }),
    }]);
    let s = settled(case.decide(&observed));
    assert!(
        matches!(&s.outcome.state, State::Stalled { reason, message }
        if reason == "ObjectConflict" && message.contains("Deployment istio-system/istiod is managed by IstioInstall other")),
        "{:?}",
        s.outcome.state
    );
    assert_eq!(s.next, Next::After(WHEN_CONTESTED));
    assert_eq!(s.outcome.components[0].version.as_deref(), Some("1.24.6"));
    assert!(
        s.outcome.components[1..]
            .iter()
            .all(|c| c.version.is_none())
    );

    // Once the other install lets go of it, it is taken over.
    case.claims = Claims::new(vec![OtherInstallClaims {
        name: "other".into(),
        created: 0,
        deleting: false,
        held: Arc::new(Held {
            components: Some(vec![]),
            objects: Some(Default::default()),
        }),
    }]);
    let w = writes(case.decide(&observed));
    assert_eq!(names(&w.objects), ["istiod"]);

    // An object no Istio install made is never taken over.
    let mut observed = converged(&case.plan);
    let foreign = observed.live.get_mut(&key).expect("planned");
    foreign["metadata"]["labels"] = json!({"app": "mine"});
    let s = settled(case.decide(&observed));
    assert!(
        matches!(&s.outcome.state, State::Stalled { message, .. } if message.contains("was not created by an Istio install"))
    );
}

#[test]
fn prune_waits_for_a_healthy_install_and_hands_over_what_another_renders() {
    let mut case = Case::new();
    let mut observed = converged(&case.plan);
    let mut old = object("ConfigMap", "istio-old-revision", "pilot");
    old["metadata"]["ownerReferences"] = json!([{"uid": UID}]);
    let mut tag = object(
        "MutatingWebhookConfiguration",
        "istio-revision-tag-default",
        "pilot",
    );
    tag["metadata"]["ownerReferences"] = json!([{"uid": UID}]);
    if let Some(m) = tag["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    let mut gateway = object("Deployment", "old-gateway", "old-gateway");
    gateway["metadata"]["ownerReferences"] = json!([{"uid": UID}]);
    let mut not_ours = object("ConfigMap", "copied-labels", "pilot");
    not_ours["metadata"]["ownerReferences"] = json!([{"uid": "someone-else"}]);
    observed.owned.extend([old, tag.clone(), gateway, not_ours]);

    // While istiod rolls out, nothing is pruned.
    let istiod = ObjectKey::of(&case.plan.steps[1].objects[1]);
    let rolling = live(&case.plan.steps[1].objects[1], false);
    let mut rolling_out = observed.clone();
    rolling_out.live.insert(istiod, rolling);
    let s = settled(case.decide(&rolling_out));
    assert!(matches!(s.outcome.state, State::Progressing { .. }));
    assert!(s.prunes.is_empty());

    // Once Ready: last installed first (the gateway before pilot's objects); the revision tag
    // another install now renders is handed over.
    case.claims = Claims::new(vec![OtherInstallClaims {
        name: "canary".into(),
        created: 9,
        deleting: false,
        held: Arc::new(Held {
            components: Some(vec![]),
            objects: Some([ObjectKey::of(&tag)].into()),
        }),
    }]);
    let s = settled(case.decide(&observed));
    assert_eq!(s.outcome.state, State::Ready);
    let pruned: Vec<String> = s.prunes.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        pruned,
        [
            "Deployment istio-system/old-gateway",
            "ConfigMap istio-system/istio-old-revision"
        ]
    );
    assert_eq!(s.handovers, [(ObjectKey::of(&tag), "canary".to_string())]);
}

#[test]
fn an_upgrade_mid_way_resumes_at_the_first_component_not_yet_upgraded() {
    let mut case = Case::new();
    case.direction = Direction::Upgrade {
        from: Release::parse("1.23.6").expect("a release"),
    };
    // base and pilot were applied at 1.24.6 already; ztunnel is still the 1.23.6 one.
    let mut observed = converged(&case.plan);
    let ztunnel = ObjectKey::of(&case.plan.steps[2].objects[0]);
    let mut old = live(&case.plan.steps[2].objects[0], true);
    old["metadata"]["labels"][crate::plan::INTENT_LABEL] = json!("from-1.23.6");
    observed.live.insert(ztunnel, old);
    let w = writes(case.decide(&observed));
    assert_eq!((w.step, names(&w.objects)), (2, vec!["ztunnel"]));

    // Its rollout is reported as the upgrade's progress.
    let (_, s) = run_loop(&case, observed, false);
    assert!(
        matches!(&s.outcome.state, State::Progressing { reason, message }
        if reason == "Upgrading" && message.starts_with("1.23.6 to 1.24.6: ztunnel: ")),
        "{:?}",
        s.outcome.state
    );
}

#[test]
fn a_failed_write_keeps_the_versions_of_what_was_not_applied() {
    let case = Case::new();
    let mut observed = converged(&case.plan);
    observed.failure = Some(WriteFailure {
        step: 1,
        transient: true,
        forbidden: false,
        message: "the server is currently unable to handle the request".into(),
    });
    let s = settled(case.decide(&observed));
    assert_eq!(
        s.next,
        Next::Backoff,
        "a transient failure is retried with backoff"
    );
    assert!(
        matches!(&s.outcome.state, State::Progressing { reason, message }
        if reason == "ApplyFailed" && message.starts_with("component pilot: the server"))
    );
    let versions: Vec<Option<&str>> = s
        .outcome
        .components
        .iter()
        .map(|c| c.version.as_deref())
        .collect();
    assert_eq!(versions, [Some("1.24.6"), None, None]);
    assert_eq!(
        s.outcome.components[2].message.as_deref(),
        Some("waiting for pilot")
    );

    observed.failure = Some(WriteFailure {
        step: 1,
        transient: false,
        forbidden: true,
        message: "forbidden".into(),
    });
    let s = settled(case.decide(&observed));
    assert!(matches!(&s.outcome.state, State::Stalled { reason, .. } if reason == "Forbidden"));
    assert_eq!(s.next, Next::After(WHEN_BLOCKED));
}

#[test]
fn a_rollout_past_its_deadline_stalls_and_later_components_wait() {
    let case = Case::new();
    let mut observed = converged(&case.plan);
    let key = ObjectKey::of(&case.plan.steps[1].objects[1]);
    let istiod = observed.live.get_mut(&key).expect("planned");
    istiod["status"]["conditions"] = json!([{"type": "Progressing", "status": "False",
        "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"istiod-1\" has timed out progressing."}]);
    let mut ztunnel_changed = case.plan.clone();
    ztunnel_changed.steps[2].objects[0]["spec"]["replicas"] = json!(2);
    let case = Case {
        plan: ztunnel_changed,
        ..Case::new()
    };
    let s = settled(case.decide(&observed));
    assert!(
        matches!(&s.outcome.state, State::Stalled { reason, message }
        if reason == "RolloutFailed" && message.contains("component pilot") && message.contains("has timed out progressing"))
    );
    assert_eq!(
        s.outcome.components[2].version, None,
        "ztunnel is not touched"
    );
}

#[test]
fn a_field_the_server_never_echoes_is_written_once_per_reconcile() {
    let mut case = Case::new();
    case.plan.steps[0].objects[0]["data"] = json!({"dropped": "by the server"});
    let mut observed = converged(&case.plan);
    for live in observed.live.values_mut() {
        if let Some(o) = live.as_object_mut() {
            o.remove("data");
        }
    }
    let w = writes(case.decide(&observed));
    assert_eq!(w.step, 0);
    observed.applied.insert(0);
    // The answer still lacks the field: the reconcile goes on instead of writing again.
    let s = settled(case.decide(&observed));
    assert_eq!(s.outcome.state, State::Ready);
}

#[test]
fn waypoints_without_the_gateway_api_stall_and_enrolments_follow_the_spec() {
    let mut case = Case::new();
    case.missing_gateway_api = Some("spec.waypoints needs the Gateway API CRDs");
    let s = settled(case.decide(&converged(&case.plan)));
    assert!(
        matches!(&s.outcome.state, State::Stalled { reason, .. } if reason == "MissingGatewayAPI")
    );
    assert_eq!(
        s.outcome.components.last().map(|c| c.name.as_str()),
        Some("waypoints")
    );

    let mut case = Case::new();
    let labels = json!({"istio.io/dataplane-mode": "ambient", ENROLLED_BY_LABEL: INSTALL});
    case.enrolments = vec![
        ("apps".into(), labels.clone()),
        ("missing".into(), labels.clone()),
    ];
    let mut observed = converged(&case.plan);
    observed
        .namespaces
        .insert("apps".into(), json!({"team": "a"}));
    observed
        .namespaces
        .insert("old".into(), json!({ENROLLED_BY_LABEL: INSTALL}));
    observed
        .namespaces
        .insert("others".into(), json!({ENROLLED_BY_LABEL: "another"}));
    let s = settled(case.decide(&observed));
    assert_eq!(s.enrol, [("apps".to_string(), labels.clone())]);
    assert_eq!(s.unenrol, ["old"]);
    assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
    // Already labelled: nothing to write.
    observed.namespaces.insert("apps".into(), labels);
    observed.namespaces.remove("old");
    let s = settled(case.decide(&observed));
    assert!(s.enrol.is_empty() && s.unenrol.is_empty());
}

#[test]
fn uninstall_goes_in_reverse_order_one_component_at_a_time() {
    let plan = the_plan();
    let mut owned: Vec<Value> = plan
        .steps
        .iter()
        .flat_map(|s| &s.objects)
        .map(|o| live(o, true))
        .collect();
    let mut kept = object("ConfigMap", "keep-me", "pilot");
    kept["metadata"]["annotations"] = json!({crate::api::IGNORE_ANNOTATION: "true"});
    owned.push(kept.clone());
    let mut going = object("ConfigMap", "terminating", "ztunnel");
    going["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
    owned.push(going);

    let order: Vec<(String, Vec<String>)> = std::iter::from_fn({
        let mut owned = owned.clone();
        move || match uninstall(owned.clone()) {
            UninstallStep::Delete { component, keys } => {
                owned.retain(|o| !keys.contains(&ObjectKey::of(o)));
                Some((component, keys.iter().map(|k| k.name.clone()).collect()))
            }
            UninstallStep::Finish { .. } => None,
        }
    })
    .collect();
    assert_eq!(
        order,
        [
            ("ztunnel".to_string(), vec!["ztunnel".to_string()]),
            (
                "pilot".to_string(),
                vec!["istio".to_string(), "istiod".to_string()]
            ),
            ("base".to_string(), vec!["istio-ca-root".to_string()]),
        ]
    );
    let rest: Vec<Value> = owned
        .into_iter()
        .filter(|o| o["metadata"]["name"] == "keep-me" || o["metadata"]["name"] == "terminating")
        .collect();
    assert_eq!(
        uninstall(rest),
        UninstallStep::Finish {
            release: vec![kept]
        }
    );
}

#[test]
fn objects_the_controller_vouches_for_are_not_compared_again() {
    let mut case = Case::new();
    case.plan.steps[1].objects[0]["data"] = json!({"mesh": "ours"});
    let mut observed = converged(&case.plan);
    let key = ObjectKey::of(&case.plan.steps[1].objects[0]);
    if let Some(cm) = observed.live.get_mut(&key) {
        cm["data"] = json!({"mesh": "theirs"});
    }
    // Unchanged since it was found to match (same resourceVersion, same intent): trusted.
    observed.in_sync.insert(key.clone());
    assert!(matches!(case.decide(&observed), Decision::Settle(_)));
    // Otherwise compared, and the drift is repaired.
    observed.in_sync.clear();
    let w = writes(case.decide(&observed));
    assert_eq!(names(&w.objects), ["istio"]);
}
