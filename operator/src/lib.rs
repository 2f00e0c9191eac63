//! istio-install-operator: installs and upgrades Istio from one `IstioInstall` resource.
//!
//! The data flows one way: [`validate`] turns a spec into a [`validate::ValidatedInstall`],
//! [`render`] turns that into Kubernetes objects, [`plan`] groups them into ordered steps,
//! [`decide`] says what to write next from what is observed, and only [`apply`] writes.

pub mod api;
pub mod apply;
pub mod bundle;
pub mod client;
pub mod controller;
pub mod decide;
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
