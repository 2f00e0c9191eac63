//! istio-install-operator: installs and upgrades Istio from one `IstioInstall` resource.
//!
//! The data flows one way: [`validate`] turns a spec into a [`validate::ValidatedInstall`],
//! [`render`] turns that into Kubernetes objects, [`plan`] groups them into ordered steps,
//! [`decide`] says what to write next from what is observed, and only [`apply`] writes.

// No panics outside tests (issue #13): input is untrusted, and one install's panic must never
// take the operator down. `make lint` (clippy -D warnings) enforces it for every module; the
// one exception is an `expect` on a constant in render::environment, which says why.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod api;
pub mod apply;
pub mod bundle;
pub mod client;
pub mod controller;
pub mod decide;
pub mod json;
pub mod kinds;
pub mod migrate;
pub mod overlay;
pub mod plan;
pub mod rbac;
pub mod render;
pub mod status;
pub mod telemetry;
pub mod upgrade;
pub mod validate;
pub mod values;
