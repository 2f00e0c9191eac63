//! Render speed: validate + render of the public reference cases, in process.
//! `cargo bench -p istio-install-operator --bench render` (figures in BENCHMARKS.md).

use criterion::{Criterion, criterion_group, criterion_main};
use istio_install_operator::api::IstioInstallSpec;
use istio_install_operator::{render, validate};
use std::hint::black_box;

const CASES: &[(&str, &str)] = &[
    ("1.23.6-ambient", "version: 1.23.6\nprofile: ambient\n"),
    ("1.23.6-default", "version: 1.23.6\nprofile: default\n"),
    ("1.23.6-minimal", "version: 1.23.6\nprofile: minimal\n"),
    ("1.24.6-ambient", "version: 1.24.6\nprofile: ambient\n"),
    ("1.24.6-default", "version: 1.24.6\nprofile: default\n"),
    ("1.24.6-demo", "version: 1.24.6\nprofile: demo\n"),
];

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    for (name, yaml) in CASES {
        let spec: IstioInstallSpec = serde_saphyr::from_str(yaml).expect("case parses");
        // The template environment is built and each template compiled once per process;
        // warm that up outside the measurement, as the operator does on its first reconcile.
        let v = validate::validate(&spec).expect("valid");
        render::render(&v, Some("bench")).expect("renders");
        // Every iteration renders and parses everything: nothing is memoised between renders.
        group.bench_function(*name, |b| {
            b.iter(|| {
                let v = validate::validate(black_box(&spec)).expect("valid");
                render::render(&v, Some("bench")).expect("renders")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
