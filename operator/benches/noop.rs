//! What a no-op reconcile of a Ready 1.24.6 ambient install costs in process, by part:
//! validate + render + plan (memoised per generation by the controller, so a no-op skips it),
//! reading the cached live objects as JSON, and the decision over them. `cargo bench -p istio-install-operator --bench noop` (figures in BENCHMARKS.md).

use criterion::{Criterion, criterion_group, criterion_main};
use istio_install_operator::api::IstioInstallSpec;
use istio_install_operator::decide::{self, Decision, Input, Observed};
use istio_install_operator::plan::claims::Claims;
use istio_install_operator::plan::{self, ObjectKey, Owner};
use istio_install_operator::upgrade::Direction;
use istio_install_operator::{render, validate};
use kube::api::DynamicObject;
use serde_json::{Value, json};
use std::hint::black_box;

fn owner() -> Owner {
    Owner {
        api_version: "istioinstall.io/v1alpha1".into(),
        kind: "IstioInstall".into(),
        name: "bench".into(),
        uid: "uid-bench".into(),
    }
}

/// The plan as the controller memoises it: every object stamped with its intent digest.
fn planned(spec: &IstioInstallSpec) -> plan::Plan {
    let v = validate::validate(spec).expect("valid");
    let rendered = render::render(&v, Some("bench")).expect("renders");
    let mut plan = plan::plan(rendered, &owner());
    for o in plan.steps.iter_mut().flat_map(|s| &mut s.objects) {
        plan::stamp_intent(o);
    }
    plan
}

/// What the API server holds once the plan is applied and rolled out.
fn live(desired: &Value) -> Value {
    let mut live = desired.clone();
    plan::stamp_intent(&mut live);
    live["metadata"]["generation"] = json!(1);
    live["metadata"]["resourceVersion"] = json!("1");
    live["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
        "availableReplicas": 1, "desiredNumberScheduled": 1, "updatedNumberScheduled": 1,
        "numberAvailable": 1, "conditions": [{"type": "Established", "status": "True"},
        {"type": "Programmed", "status": "True"}]});
    live
}

fn bench(c: &mut Criterion) {
    let spec: IstioInstallSpec =
        serde_saphyr::from_str("version: 1.24.6\nprofile: ambient\n").expect("case parses");
    let plan = planned(&spec);
    let lives: Vec<Value> = plan
        .steps
        .iter()
        .flat_map(|s| &s.objects)
        .map(live)
        .collect();
    let cached: Vec<DynamicObject> = lives
        .iter()
        .map(|l| serde_json::from_value(l.clone()).expect("an object"))
        .collect();
    let mut observed = Observed::default();
    for l in &lives {
        observed.live.insert(ObjectKey::of(l), l.clone());
    }
    for ns in &plan.namespaces {
        observed.namespaces.insert(ns.clone(), json!({}));
    }
    let claims = Claims::default();
    let input = Input {
        install: "bench",
        uid: "uid-bench",
        plan: &plan,
        release: "1.24.6",
        direction: &Direction::Steady,
        missing_gateway_api: None,
        enrolments: &[],
        claims: &claims,
    };
    assert!(matches!(
        decide::decide(&input, &observed),
        Decision::Settle(_)
    ));

    let mut group = c.benchmark_group("noop");
    group.bench_function("validate+render+plan", |b| {
        b.iter(|| planned(black_box(&spec)))
    });
    group.bench_function("cached objects as JSON", |b| {
        b.iter(|| {
            cached
                .iter()
                .map(|o| serde_json::to_value(black_box(o)).expect("serializes"))
                .collect::<Vec<Value>>()
        })
    });
    group.bench_function("decide, every object compared", |b| {
        b.iter(|| decide::decide(black_box(&input), black_box(&observed)))
    });
    // What a no-op reconcile does: every live object is unchanged since it was found in sync.
    let mut vouched = observed.clone();
    vouched.in_sync = observed.live.keys().cloned().collect();
    group.bench_function("decide, objects unchanged since in sync", |b| {
        b.iter(|| decide::decide(black_box(&input), black_box(&vouched)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
