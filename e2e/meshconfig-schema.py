#!/usr/bin/env python3
"""Writes charts/<minor>/meshconfig.yaml: the fields and JSON types of Istio's MeshConfig, read
from istio/api's mesh/v1alpha1/config.proto (and the .proto files it imports) at one commit.

    e2e/meshconfig-schema.py <istio/api git dir> <commit> <minor> > charts/<minor>/meshconfig.yaml

The operator checks spec.meshConfig against this (operator/src/validate/meshconfig.rs) the way
istiod's JSON decoding of the `mesh` ConfigMap key does. Only names and types are taken: no
comments, no generated code. Use the commit that the release's go.mod pins for istio.io/api
(e2e/build-istiod.sh prints it).

A small proto3 reader instead of protoc: the files use a narrow subset (messages, enums, oneofs,
maps, options) and this keeps the tool free of a protobuf toolchain.
"""
import re
import subprocess
import sys

WELL_KNOWN = {
    "google.protobuf.Duration": "duration",
    "google.protobuf.Struct": "struct",
    "google.protobuf.Value": "value",
    "google.protobuf.ListValue": "list",
    "google.protobuf.Any": "any",
    "google.protobuf.Empty": "empty",
    "google.protobuf.Timestamp": "timestamp",
    "google.protobuf.BoolValue": "bool",
    "google.protobuf.StringValue": "string",
    "google.protobuf.BytesValue": "bytes",
    "google.protobuf.Int32Value": "int32",
    "google.protobuf.UInt32Value": "uint32",
    "google.protobuf.Int64Value": "int64",
    "google.protobuf.UInt64Value": "uint64",
    "google.protobuf.FloatValue": "float",
    "google.protobuf.DoubleValue": "double",
}
SCALARS = {
    "string": "string", "bool": "bool", "bytes": "bytes", "double": "double", "float": "float",
    "int32": "int32", "sint32": "int32", "sfixed32": "int32",
    "uint32": "uint32", "fixed32": "uint32",
    "int64": "int64", "sint64": "int64", "sfixed64": "int64",
    "uint64": "uint64", "fixed64": "uint64",
}

TOKEN = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"|[A-Za-z_][\w.]*|-?\d+|\S', re.S)


def tokens(text):
    return [t for t in TOKEN.findall(text) if not t.startswith("//") and not t.startswith("/*")]


def camel(name):
    """protoc's default json_name: drop each '_' and upper-case the letter after it."""
    out, up = [], False
    for c in name:
        if c == "_":
            up = True
        else:
            out.append(c.upper() if up else c)
            up = False
    return "".join(out)


class Reader:
    def __init__(self, git_dir, commit):
        self.git_dir, self.commit = git_dir, commit
        self.messages = {}  # full name -> {"fields": [(json, type, oneof)]}
        self.enums = {}  # full name -> [value names]
        self.pending = []  # (message full name, scope, field json name, raw type, label, oneof)
        self.loaded = set()

    def load(self, path):
        # google/*: well-known types (built in above) and options only.
        if path in self.loaded or path.startswith("google/"):
            return
        self.loaded.add(path)
        text = subprocess.run(["git", "-C", self.git_dir, "show", f"{self.commit}:{path}"],
                              check=True, capture_output=True, text=True).stdout
        toks = tokens(text)
        package, i = "", 0
        while i < len(toks):
            t = toks[i]
            if t == "import":
                j = i + 1
                if toks[j] in ("public", "weak"):
                    j += 1
                self.load(toks[j].strip('"'))
                i = toks.index(";", j) + 1
            elif t == "package":
                package = toks[i + 1]
                i += 3
            elif t in ("syntax", "option"):
                i = toks.index(";", i) + 1
            elif t == "message":
                i = self.message(toks, i + 1, package)
            elif t == "enum":
                i = self.enum(toks, i + 1, package)
            elif t == ";":  # a stray ';' after a closing brace is legal
                i += 1
            elif t in ("service", "extend"):
                i = skip_block(toks, toks.index("{", i))
            else:
                raise SystemExit(f"{path}: unexpected token {t!r}")

    def enum(self, toks, i, scope):
        name = f"{scope}.{toks[i]}"
        assert toks[i + 1] == "{"
        i += 2
        values = []
        while toks[i] != "}":
            if toks[i] in ("option", "reserved"):
                i = toks.index(";", i) + 1
                continue
            values.append(toks[i])
            i = skip_statement(toks, i)
        self.enums[name] = values
        return i + 1

    def message(self, toks, i, scope):
        name = f"{scope}.{toks[i]}"
        assert toks[i + 1] == "{", (name, toks[i + 1])
        self.messages[name] = {"fields": []}
        i += 2
        oneof = None
        depth_oneof = False
        while True:
            t = toks[i]
            if t == "}":
                if depth_oneof:
                    depth_oneof, oneof = False, None
                    i += 1
                    continue
                return i + 1
            if t in ("option", "reserved", "extensions"):
                i = toks.index(";", i) + 1
            elif t == ";":
                i += 1
            elif t == "message":
                i = self.message(toks, i + 1, name)
            elif t == "enum":
                i = self.enum(toks, i + 1, name)
            elif t == "oneof":
                oneof, depth_oneof = toks[i + 1], True
                i += 3
            elif t == "extend":
                i = skip_block(toks, toks.index("{", i))
            else:
                label = None
                if t in ("repeated", "optional"):
                    label, i = t, i + 1
                if toks[i] == "map":
                    # map < key , value > name = n ;
                    raw = ("map", toks[i + 2], toks[i + 4])
                    fname = toks[i + 6]
                else:
                    raw, fname = toks[i], toks[i + 1]
                json_name = camel(fname)
                k = i
                while toks[k] != ";":
                    if toks[k] == "json_name":
                        json_name = toks[k + 2].strip('"')
                    k += 1
                self.pending.append((name, name, json_name, raw, label, oneof))
                i = k + 1

    def resolve(self, scope, raw):
        if raw in SCALARS:
            return SCALARS[raw]
        if raw.startswith("."):
            cands = [raw[1:]]
        else:
            parts = scope.split(".")
            cands = [".".join(parts[:n] + [raw]) for n in range(len(parts), -1, -1)]
        for c in cands:
            c = c.lstrip(".")
            if c in WELL_KNOWN:
                return WELL_KNOWN[c]
            if c in self.messages or c in self.enums:
                return c
        raise SystemExit(f"cannot resolve type {raw} in {scope}")

    def finish(self):
        for msg, scope, json_name, raw, label, oneof in self.pending:
            if isinstance(raw, tuple):
                t = "{}" + self.resolve(scope, raw[2])
            else:
                t = self.resolve(scope, raw)
                if label == "repeated":
                    t = "[]" + t
            self.messages[msg]["fields"].append((json_name, t, oneof))


def skip_statement(toks, i):
    return toks.index(";", i) + 1


def skip_block(toks, i):
    depth = 0
    while True:
        if toks[i] == "{":
            depth += 1
        elif toks[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def reachable(r, root):
    seen, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in r.messages:
            for _, t, _ in r.messages[n]["fields"]:
                t = t.removeprefix("[]").removeprefix("{}")
                if t in r.messages or t in r.enums:
                    todo.append(t)
    return seen


def quote(s):
    return '"' + s + '"' if re.search(r'[\[\]{}:#,&*!|>\'"%@`]', s) or s in ("", "null", "true", "false") else s


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    git_dir, commit, minor = sys.argv[1:]
    r = Reader(git_dir, commit)
    r.load("mesh/v1alpha1/config.proto")
    r.finish()
    root = "istio.mesh.v1alpha1.MeshConfig"
    keep = reachable(r, root)
    full = subprocess.run(["git", "-C", git_dir, "rev-parse", commit], check=True,
                          capture_output=True, text=True).stdout.strip()
    print(f"# MeshConfig fields and JSON types of Istio {minor}, read from istio/api at {full}")
    print(f"# by e2e/meshconfig-schema.py (do not edit by hand). Types: scalars, duration, struct, value,")
    print("# any, a message or enum by full name; []T is a list, {}T a map with string keys.")
    print(f"root: {root}")
    print("messages:")
    for name in sorted(n for n in keep if n in r.messages):
        print(f"  {name}:")
        fields = r.messages[name]["fields"]
        if not fields:
            print("    fields: {}")
            continue
        print("    fields:")
        for json_name, t, _ in fields:
            print(f"      {json_name}: {quote(t)}")
        groups = {}
        for json_name, _, o in fields:
            if o:
                groups.setdefault(o, []).append(json_name)
        if groups:
            print("    oneofs:")
            for members in groups.values():
                print(f"    - [{', '.join(members)}]")
    print("enums:")
    for name in sorted(n for n in keep if n in r.enums):
        print(f"  {name}: [{', '.join(r.enums[name])}]")


if __name__ == "__main__":
    main()
