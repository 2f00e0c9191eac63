//! Component selection and Kubernetes-level overrides, shaped like IstioOperator's
//! `spec.components` so existing specs can be pasted.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Components of the installation. A component left out follows the profile.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Components {
    /// Istio's CRDs, the default validating webhook and the reader ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ComponentSpec>,
    /// istiod, the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pilot: Option<ComponentSpec>,
    /// The istio-cni node agent (required by ambient mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<ComponentSpec>,
    /// The ztunnel node proxy (ambient mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ztunnel: Option<ComponentSpec>,
    /// Ingress gateways (the classic `istio-ingressgateway` Deployment and Service), unique by
    /// name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub ingress_gateways: Vec<GatewayComponentSpec>,
    /// Egress gateways (the classic `istio-egressgateway`), unique by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub egress_gateways: Vec<GatewayComponentSpec>,
}

/// One component: whether it is installed, where, and how its workload is shaped.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Install this component. Unset follows the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Namespace of this component. Defaults to `spec.namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("component namespace must be a DNS label"))]
    pub namespace: Option<String>,
    /// Kubernetes-level overrides of the component's workload, applied after rendering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<KubernetesOverrides>,
}

/// A classic ingress or egress gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayComponentSpec {
    /// Name of the gateway's Deployment and Service, e.g. `istio-ingressgateway`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("gateway name must be a DNS label"))]
    pub name: String,
    /// Install this gateway. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Namespace of the gateway. Defaults to `spec.namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("gateway namespace must be a DNS label"))]
    pub namespace: Option<String>,
    /// Labels of the gateway pods and the Service selector (default `app`/`istio` from the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<BTreeMap<String, String>>,
    /// Kubernetes-level overrides of the gateway's workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<KubernetesOverrides>,
}

/// Kubernetes settings of a component's Deployment or DaemonSet (and its Service, HPA and PDB),
/// applied over what the chart rendered. Same names as IstioOperator's `k8s`.
///
/// Kubernetes-typed fields are kept as JSON here and checked against their Kubernetes types by
/// `validate` (errors name the field): a value that does not fit must stall this install, never
/// fail the decoding of the whole IstioInstall list the controller watches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesOverrides {
    /// Container resources of the main container (a Kubernetes `ResourceRequirements`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schemas::resources")]
    pub resources: Option<serde_json::Value>,
    /// Replicas of a Deployment. Ignored (with a warning) while an HPA manages the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replica_count: Option<i32>,
    /// HorizontalPodAutoscaler spec (autoscaling/v2); merged over the rendered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_object")]
    pub hpa_spec: Option<serde_json::Value>,
    /// PodDisruptionBudget spec; merged over the rendered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_object")]
    pub pod_disruption_budget: Option<serde_json::Value>,
    /// Node selector of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the pods (replace the rendered ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_list")]
    pub tolerations: Option<Vec<serde_json::Value>>,
    /// Affinity of the pods (a Kubernetes `Affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_object")]
    pub affinity: Option<serde_json::Value>,
    /// Environment variables of the main container (Kubernetes `EnvVar`s), merged by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::free_form_list")]
    pub env: Vec<serde_json::Value>,
    /// Annotations of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Annotations of the component's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_annotations: Option<BTreeMap<String, String>>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Pod security context (a Kubernetes `PodSecurityContext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_object")]
    pub security_context: Option<serde_json::Value>,
    /// Deployment strategy or DaemonSet updateStrategy; merged over the rendered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_object")]
    pub strategy: Option<serde_json::Value>,
    /// Service spec fields (type, ports, loadBalancerIP, externalTrafficPolicy, …); merged over
    /// the rendered Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_object")]
    pub service: Option<serde_json::Value>,
    /// Patches by path on any object this component renders, as IstioOperator overlays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<Overlay>,
}

/// Patches applied to one rendered object, selected by kind and name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Overlay {
    /// apiVersion of the object; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the object, e.g. `Deployment`.
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Name of the object.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Patches, applied in order.
    #[serde(default)]
    pub patches: Vec<OverlayPatch>,
}

/// One patch: a path such as `spec.template.spec.containers.[name:discovery].args[0]` and a value.
/// Without a value, the path is removed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OverlayPatch {
    /// Dot-separated path; `[n]` indexes a list, `[key:value]` selects a list item by a field.
    #[schemars(length(min = 1))]
    pub path: String,
    /// New value at the path. Absent: remove the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::free_form_any")]
    pub value: Option<serde_json::Value>,
}
