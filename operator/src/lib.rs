//! istio-install-operator: installs and upgrades Istio from one `IstioInstall` resource.
//!
//! The data flows one way: [`validate`] turns a spec into a [`validate::ValidatedInstall`],
//! [`render`] turns that into Kubernetes objects, and only the controller talks to the cluster.

pub mod api;
pub mod apply;
pub mod bundle;
pub mod client;
pub mod controller;
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
