//! The one table of the Kubernetes kinds the operator deals with. Render order, the API
//! resources the applier talks to, the watches, prune and uninstall, health gates, the security
//! boundary and the generated RBAC (`istio-install-operator rbac`) all read it, so adding a kind
//! to a bundle means adding one row here (a test renders every bundle and fails on a kind that
//! has no row).

/// Where an object of a kind lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// When a live object of a kind lets the next component go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthRule {
    /// Ready once it exists.
    Exists,
    /// A CRD: `Established=True`.
    Established,
    /// A Deployment: every replica updated and available, old ones gone.
    DeploymentRollout,
    /// A DaemonSet: every scheduled pod updated and available.
    DaemonSetRollout,
    /// A Gateway API Gateway: `Programmed=True` (istiod programmed the waypoint).
    Programmed,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The resource name in API paths and RBAC rules.
    pub plural: &'static str,
    pub scope: Scope,
    /// A template (or the waypoint renderer) may produce it. Namespace is in the table only for
    /// the namespaces the operator creates and enrols, never as a rendered object.
    pub rendered: bool,
    /// Served only when someone else's CRD is installed (Gateway API, multus).
    pub optional: bool,
    /// Objects of ours of this kind are watched, so a change brings their install back.
    pub watched: bool,
    /// Deleted by prune and uninstall when the install no longer renders them. CRDs never are:
    /// users' Istio configuration lives in them.
    pub prunable: bool,
    pub health: HealthRule,
}

impl Kind {
    /// The API group ("" for the core group).
    pub fn group(&self) -> &'static str {
        self.api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }

    /// Verbs the operator needs on objects of this kind.
    pub fn verbs(&self) -> &'static [&'static str] {
        match (self.rendered, self.prunable) {
            // Namespaces: created when missing, labelled for enrolment, never deleted.
            (false, _) => &["get", "list", "watch", "create", "patch"],
            // CRDs: created and upgraded, never deleted.
            (true, false) => &["get", "list", "watch", "create", "patch", "update"],
            (true, true) => &[
                "get", "list", "watch", "create", "patch", "update", "delete",
            ],
        }
    }
}

const fn row(
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    scope: Scope,
    health: HealthRule,
) -> Kind {
    Kind {
        api_version,
        kind,
        plural,
        scope,
        rendered: true,
        optional: false,
        watched: true,
        prunable: true,
        health,
    }
}

use HealthRule::*;
use Scope::*;

/// Every kind, in apply order within a component: what others refer to goes first, workloads
/// after their configuration and RBAC, webhooks last (they point at a Service that must be
/// serving).
pub const KINDS: &[Kind] = &[
    Kind {
        prunable: false,
        ..row(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            Cluster,
            Established,
        )
    },
    Kind {
        rendered: false,
        watched: false,
        prunable: false,
        ..row("v1", "Namespace", "namespaces", Cluster, Exists)
    },
    row("v1", "ResourceQuota", "resourcequotas", Namespaced, Exists),
    row(
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        Namespaced,
        Exists,
    ),
    row("v1", "ConfigMap", "configmaps", Namespaced, Exists),
    row(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        Cluster,
        Exists,
    ),
    row(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        Cluster,
        Exists,
    ),
    row(
        "rbac.authorization.k8s.io/v1",
        "Role",
        "roles",
        Namespaced,
        Exists,
    ),
    row(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
        Namespaced,
        Exists,
    ),
    row("v1", "Service", "services", Namespaced, Exists),
    row("v1", "Endpoints", "endpoints", Namespaced, Exists),
    row(
        "apps/v1",
        "DaemonSet",
        "daemonsets",
        Namespaced,
        DaemonSetRollout,
    ),
    row(
        "apps/v1",
        "Deployment",
        "deployments",
        Namespaced,
        DeploymentRollout,
    ),
    row(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        Namespaced,
        Exists,
    ),
    row(
        "policy/v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        Namespaced,
        Exists,
    ),
    row(
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        Cluster,
        Exists,
    ),
    row(
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        Cluster,
        Exists,
    ),
    row(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        Cluster,
        Exists,
    ),
    row(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        Cluster,
        Exists,
    ),
    // multus (`cni.provider: multus`); kept after the others as it always was.
    Kind {
        optional: true,
        ..row(
            "k8s.cni.cncf.io/v1",
            "NetworkAttachmentDefinition",
            "network-attachment-definitions",
            Namespaced,
            Exists,
        )
    },
    // Waypoints: rendered from spec.waypoints; istiod programs them.
    Kind {
        optional: true,
        ..row(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "gateways",
            Namespaced,
            Programmed,
        )
    },
];

/// The row of a kind, by kind name (kind names are unique in the table).
pub fn lookup(kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// The row of an `apiVersion` + `kind` pair.
pub fn lookup_exact(api_version: &str, kind: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.kind == kind && k.api_version == api_version)
}

/// Whether a kind is cluster-scoped (such objects carry no namespace). Unknown kinds are taken
/// as namespaced; the boundary refuses them anyway.
pub fn is_cluster_scoped(kind: &str) -> bool {
    lookup(kind).is_some_and(|k| k.scope == Cluster)
}

/// Apply order of a kind within a component; unknown kinds go last.
pub fn apply_rank(kind: &str) -> usize {
    KINDS
        .iter()
        .position(|k| k.kind == kind)
        .unwrap_or(KINDS.len())
}

/// Kinds listed when pruning and uninstalling.
pub fn prunable() -> impl Iterator<Item = &'static Kind> {
    KINDS.iter().filter(|k| k.prunable)
}

/// Kinds the controller watches (those of them the API server serves).
pub fn watched() -> impl Iterator<Item = &'static Kind> {
    KINDS.iter().filter(|k| k.watched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_unique_and_plurals_are_lower_case() {
        for (i, k) in KINDS.iter().enumerate() {
            assert!(
                KINDS[i + 1..].iter().all(|o| o.kind != k.kind),
                "{} twice",
                k.kind
            );
            assert_eq!(k.plural, k.plural.to_lowercase());
        }
    }

    #[test]
    fn crds_and_namespaces_are_never_pruned() {
        assert!(prunable().all(|k| k.kind != "CustomResourceDefinition" && k.kind != "Namespace"));
        assert!(prunable().any(|k| k.kind == "NetworkAttachmentDefinition"));
    }

    #[test]
    fn webhooks_go_after_the_service_they_call() {
        assert!(apply_rank("Service") < apply_rank("MutatingWebhookConfiguration"));
        assert!(apply_rank("ServiceAccount") < apply_rank("Deployment"));
        assert!(apply_rank("CustomResourceDefinition") < apply_rank("ConfigMap"));
        assert_eq!(apply_rank("Unknown"), KINDS.len());
    }
}
