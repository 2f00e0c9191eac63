"""How a spec becomes upstream chart values (istioctl's rules), on small made-up profiles."""
import os
import tempfile
import unittest

from reftool import generate

DEFAULT = """
spec:
  hub: gcr.io/istio-testing
  tag: latest
  components:
    base: {enabled: true}
    pilot: {enabled: true}
    ingressGateways: [{name: istio-ingressgateway, enabled: true}]
    egressGateways: [{name: istio-egressgateway, enabled: false}]
  values:
    defaultRevision: ""
    global: {istioNamespace: istio-system}
"""
AMBIENT = """
spec:
  components:
    cni: {enabled: true}
    ztunnel: {enabled: true}
    ingressGateways: [{name: istio-ingressgateway, enabled: false}]
  values: {profile: ambient}
"""


class PlanTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        os.makedirs(os.path.join(self.dir.name, "profiles"))
        for name, text in (("default", DEFAULT), ("ambient", AMBIENT)):
            with open(os.path.join(self.dir.name, "profiles", f"{name}.yaml"), "w") as f:
                f.write(text)

    def tearDown(self):
        self.dir.cleanup()

    def plan(self, spec):
        return generate.plan(self.dir.name, "1.24.6", spec)

    def test_default_profile_with_published_hub_and_tag(self):
        charts = self.plan({"version": "1.24.6"})
        self.assertEqual([c["chart"] for c in charts], ["base", "istio-control/istio-discovery", "gateways/istio-ingress"])
        v = charts[1]["values"]
        self.assertEqual((v["global"]["hub"], v["global"]["tag"]), ("docker.io/istio", "1.24.6"))
        self.assertNotIn("defaultRevision", v)  # default.yaml's values are istioctl's own plumbing
        self.assertNotIn("pilot", v)
        self.assertEqual(charts[2]["values"]["gateways"]["istio-ingressgateway"], {"name": "istio-ingressgateway"})
        self.assertNotIn("gateways", v)

    def test_profile_lists_replace_and_ztunnel_is_flattened(self):
        charts = self.plan({"version": "1.24.6", "profile": "ambient", "values": {"ztunnel": {"logLevel": "debug"}}})
        self.assertEqual([c["chart"] for c in charts],
                         ["base", "istio-control/istio-discovery", "istio-cni", "ztunnel"])
        z = charts[3]["values"]
        self.assertEqual((z["logLevel"], z["profile"], z["global"]["tag"]), ("debug", "ambient", "1.24.6"))
        self.assertNotIn("pilot", z)
        self.assertNotIn("pilot", charts[1]["values"])  # enablement is not copied into values

    def test_gateways_by_name_with_labels_and_user_values_last(self):
        charts = self.plan({"version": "1.24.6", "revision": "canary", "hub": "example.com/istio",
                            "meshConfig": {"accessLogFile": "/dev/stdout"},
                            "components": {"ingressGateways": [{"name": "a", "label": {"app": "a"}},
                                                               {"name": "b", "enabled": False}],
                                           "egressGateways": [{"name": "e", "namespace": "egress"}]},
                            "values": {"global": {"hub": "other.example.com"}}})
        gws = [(c["chart"], c["namespace"], c["values"]["gateways"]) for c in charts if "gateways/" in c["chart"]]
        self.assertEqual(gws[0][2]["istio-ingressgateway"], {"name": "a", "labels": {"app": "a"}})
        self.assertEqual((gws[1][0], gws[1][1], gws[1][2]["istio-egressgateway"]["name"]),
                         ("gateways/istio-egress", "egress", "e"))
        self.assertEqual(len(gws), 2)
        v = charts[0]["values"]
        self.assertEqual((v["revision"], v["global"]["hub"], v["meshConfig"]),
                         ("canary", "other.example.com", {"accessLogFile": "/dev/stdout"}))

    def test_spec_namespace_is_refused(self):
        with self.assertRaisesRegex(ValueError, "spec.namespace"):
            self.plan({"version": "1.24.6", "namespace": "mesh"})


if __name__ == "__main__":
    unittest.main()
