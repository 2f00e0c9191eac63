"""The CI summary (.ci/summary.py): a red run never reads green."""
import importlib.util
import io
import json
import os
import stat
import tempfile
import unittest

from reftool import parity

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
spec = importlib.util.spec_from_file_location("summary", os.path.join(ROOT, ".ci", "summary.py"))
summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summary)

CARGO_OK = ["running 3 tests", "test a ... ok", "test b ... ok", "test c ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"]


class SummaryTest(unittest.TestCase):
    def test_green_run(self):
        out, code = summary.summarise(CARGO_OK + ["parity: 20 passed, 0 failed"], 0)
        self.assertEqual(out, ["tests: 23 passed, 0 failed, 1 skipped"])
        self.assertEqual(code, 0)

    def test_a_red_run_without_counted_failures_is_not_0_failed(self):
        out, code = summary.summarise(CARGO_OK + ["parity: no operator binary at /x (run make build)",
                                                  "make: *** [Makefile:30: parity] Error 2"], 2)
        self.assertEqual(out, ["FAILED: parity", "tests: 3 passed, 1 failed, 1 skipped"])
        self.assertEqual(code, 2)

    def test_skipped_lines_are_skipped_never_passed(self):
        log = ["running 2 tests", "SKIPPED real istiod: no binary (make istiod)", "test x ... ok", "test y ... ok",
               "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s",
               "SKIPPED parity cross-check: no independent reference", "parity: 20 passed, 0 failed",
               "SKIPPED upstream reference drift: ISTIO_SRC is not set"]
        out, code = summary.summarise(log, 0)
        self.assertEqual(out, ["tests: 21 passed, 0 failed, 3 skipped"])
        self.assertEqual(code, 0)

    def test_cargo_failures_are_named(self):
        log = ["running 2 tests", "test render::x ... FAILED", "test y ... ok",
               "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s",
               "make: *** [Makefile:22: unit] Error 101"]
        out, code = summary.summarise(log, 2)
        self.assertEqual(out, ["FAILED: render::x, unit", "tests: 1 passed, 1 failed, 0 skipped"])
        self.assertNotEqual(code, 0)

    def test_a_deliberately_failing_parity_case(self):
        """parity with a renderer that drops a field, then the summary of its output."""
        with tempfile.TemporaryDirectory() as d:
            ref = {"case": "broken", "spec": {"version": "1.24.6"}, "objects": {
                "Service/istio-system/istiod": {"apiVersion": "v1", "kind": "Service",
                                                "metadata": {"name": "istiod", "namespace": "istio-system"},
                                                "spec": {"ports": [{"name": "grpc", "port": 15010}]}}}}
            with open(os.path.join(d, "broken.json"), "w") as f:
                json.dump(ref, f)
            fake = os.path.join(d, "operator")
            with open(fake, "w") as f:
                f.write("#!/bin/sh\nprintf 'apiVersion: v1\\nkind: Service\\nmetadata: {name: istiod}\\n"
                        "spec: {ports: [{name: grpc, port: 15011}]}\\n'\n")
            os.chmod(fake, os.stat(fake).st_mode | stat.S_IXUSR)
            lines = []
            os.environ["REFERENCE_DIR"] = d
            try:
                code = parity.main([fake], out=lines.append)
            finally:
                del os.environ["REFERENCE_DIR"]
        self.assertEqual(code, 1)
        self.assertIn("parity broken: FAILED: objects 0/1 equal, fields 5/6 equal (83.3%), 0 missing, 0 extra", lines)
        self.assertIn("  ~ Service/istio-system/istiod: spec.ports.[grpc].port: want 15010, got 15011", lines)
        self.assertEqual(lines[-1], "parity: 0 passed, 1 failed")
        log = io.StringIO("\n".join(CARGO_OK + lines + ["make: *** [Makefile:30: parity] Error 1"]))
        out, code = summary.summarise(log, 2)
        self.assertEqual(out, ["FAILED: parity broken, parity", "tests: 3 passed, 1 failed, 1 skipped"])
        self.assertEqual(code, 2)


if __name__ == "__main__":
    unittest.main()
