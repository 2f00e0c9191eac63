import unittest

from reftool import compare, normalise


def deployment(**over):
    d = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system",
                     "labels": {"app": "istiod", "helm.sh/chart": "istiod-1.24.6", "istioinstall.io/install": "mesh"}},
        "spec": {"template": {"metadata": {"labels": {"app": "istiod", "release": "istio"}},
                              "spec": {"containers": [
                                  {"name": "discovery", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                                  {"name": "sidecar"}]}}},
    }
    d.update(over)
    return d


class NormaliseTest(unittest.TestCase):
    def test_packaging_labels_and_empty_fields_are_dropped(self):
        n = normalise.normalise(dict(deployment(), status={}))
        self.assertEqual(n["metadata"]["labels"], {"app": "istiod"})
        self.assertEqual(n["spec"]["template"]["metadata"]["labels"], {"app": "istiod"})
        self.assertNotIn("status", n)

    def test_crd_keeps_names_and_versions_only(self):
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "gateways.networking.istio.io", "labels": {"x": "y"}},
               "spec": {"group": "networking.istio.io", "scope": "Namespaced", "names": {"kind": "Gateway"},
                        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"big": 1}}]}}
        n = normalise.normalise(crd)
        self.assertEqual(n["metadata"], {"name": "gateways.networking.istio.io"})
        self.assertEqual(n["spec"]["versions"], [{"name": "v1", "served": True, "storage": True}])

    def test_injector_templates_are_reduced_to_names_and_stay_so(self):
        cm = {"kind": "ConfigMap", "metadata": {"name": "istio-sidecar-injector"},
              "data": {"config": "policy: enabled\ntemplates:\n  sidecar: |\n    body\n  gateway: x\n",
                       "values": '{"global": {"hub": "h"}}'}}
        n = normalise.normalise(cm)
        self.assertEqual(n["data"]["config"], {"policy": "enabled", "templates": ["gateway", "sidecar"]})
        self.assertEqual(n["data"]["values"], {"global": {"hub": "h"}})
        self.assertEqual(normalise.normalise(n), n)

    def test_injector_values_pilot_cni_and_false_flags(self):
        values = {"pilot": {"cni": {"enabled": True, "provider": "default", "ambient": {"enabled": True}}},
                  "global": {"platform": "", "proxy": {"capNetBindService": False, "holdApplicationUntilProxyStarts": True}}}
        cm = {"kind": "ConfigMap", "metadata": {"name": "istio-sidecar-injector"},
              "data": {"config": "policy: enabled\n", "values": __import__("json").dumps(values)}}
        n = normalise.normalise(cm)["data"]["values"]
        self.assertEqual(n["pilot"]["cni"], {"enabled": True, "provider": "default"})
        self.assertEqual(n["global"], {"proxy": {"holdApplicationUntilProxyStarts": True}})

    def test_keys_and_duplicates(self):
        text = "kind: ClusterRole\nmetadata: {name: a, namespace: x}\n---\nkind: Service\nmetadata: {name: s}\n"
        self.assertEqual(list(normalise.digest(text)), ["ClusterRole//a", "Service/istio-system/s"])
        with self.assertRaisesRegex(ValueError, "Service/istio-system/s appears twice"):
            normalise.digest(text + "---\nkind: Service\nmetadata: {name: s}\n")


class CompareTest(unittest.TestCase):
    def digest(self, obj):
        return {normalise.key(obj): normalise.normalise(obj)}

    def test_named_lists_compare_by_name(self):
        a = deployment()
        b = deployment()
        b["spec"]["template"]["spec"]["containers"].reverse()
        b["spec"]["template"]["spec"]["containers"][1]["env"].reverse()
        self.assertTrue(compare.compare(self.digest(a), self.digest(b)).ok)

    def test_a_field_only_one_side_has_counts_either_way(self):
        a = deployment()
        b = deployment()
        b["spec"]["replicas"] = 2
        res = compare.compare(self.digest(a), self.digest(b))
        self.assertFalse(res.ok)
        self.assertEqual([d[1] for d in res.diffs], [("spec", "replicas")])
        res = compare.compare(self.digest(b), self.digest(a))
        self.assertEqual(res.diffs[0][2:], ("2", None))
        self.assertIn("want 2, got (absent)", res.details()[0])

    def test_rbac_lists_are_sets_other_lists_ordered(self):
        role = {"kind": "ClusterRole", "metadata": {"name": "r"},
                "rules": [{"verbs": ["get", "list"], "resources": ["pods"]}], "args": ["a", "b"]}
        other = {"kind": "ClusterRole", "metadata": {"name": "r"},
                 "rules": [{"verbs": ["list", "get"], "resources": ["pods"]}], "args": ["b", "a"]}
        res = compare.compare(self.digest(role), self.digest(other))
        self.assertEqual([d[1] for d in res.diffs], [("args",)])

    def test_types_count(self):
        a = {"kind": "Service", "metadata": {"name": "s"}, "spec": {"port": 80}}
        b = {"kind": "Service", "metadata": {"name": "s"}, "spec": {"port": "80"}}
        self.assertFalse(compare.compare(self.digest(a), self.digest(b)).ok)

    def test_missing_and_extra_objects_fail_and_are_counted(self):
        a = {"kind": "Service", "metadata": {"name": "s"}, "spec": {"port": 80}}
        b = {"kind": "Service", "metadata": {"name": "t"}, "spec": {"port": 80}}
        res = compare.compare(self.digest(a), self.digest(b))
        self.assertEqual((res.missing, res.extra), (["Service/istio-system/s"], ["Service/istio-system/t"]))
        self.assertEqual(res.equal, 0)
        self.assertIn("0/1 equal", res.summary())


if __name__ == "__main__":
    unittest.main()
