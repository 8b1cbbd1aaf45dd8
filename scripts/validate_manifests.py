"""Validate every Kubernetes object in the given YAML files, offline, and say how each was checked.

    python validate_manifests.py --crds crds/chronos.dev.yaml --k8s 1.27 --k8s 1.37 FILE...

- chronos.dev kinds: against the openAPIV3Schema of our CRD (from --crds), closed: a field the
  schema does not list is an error (the API server would silently prune it).
- Kubernetes' own kinds: kubernetes-validate, strict (unknown fields are errors), once per --k8s
  version.
- Other projects' kinds (Prometheus operator, Argo CD, Flux, kustomize): the subset schemas in
  scripts/schemas/third-party.yaml.
- Anything else fails: nothing is skipped.

Run with the venv of scripts/tools.sh (kubernetes-validate, jsonschema, PyYAML).
"""

import argparse
import copy
import os
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

HERE = os.path.dirname(os.path.abspath(__file__))


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def to_json_schema(node):
    """An OpenAPI v3 (Kubernetes structural) schema as a closed JSON schema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def crd_schemas(path):
    schemas = {}
    for crd in load_all(path):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = to_json_schema(version["schema"]["openAPIV3Schema"])
            # The API server checks these itself; the generated schema does not list them.
            schema["properties"].setdefault("apiVersion", {"const": f"{group}/{version['name']}"})
            schema["properties"].setdefault("kind", {"const": kind})
            schema["properties"].setdefault("metadata", {"type": "object"})
            schemas[f"{group}/{version['name']}/{kind}"] = (schema, f"CRD {crd['metadata']['name']} {version['name']}")
    return schemas


def third_party_schemas():
    with open(os.path.join(HERE, "schemas", "third-party.yaml")) as f:
        raw = yaml.safe_load(f)
    defs = raw.pop("$defs")
    out = {}
    for key, schema in raw.items():
        schema = copy.deepcopy(schema)
        schema["$defs"] = defs
        out[key] = (schema, "subset schema scripts/schemas/third-party.yaml")
    return out


def errors_of(schema, doc):
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crds", required=True)
    ap.add_argument("--k8s", action="append", required=True, help="Kubernetes version (repeat)")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    ours = crd_schemas(args.crds)
    if not ours:
        sys.exit(f"FAIL no CRDs in {args.crds}")
    theirs = third_party_schemas()
    checked = failed = 0
    for path in args.files:
        docs = load_all(path)
        if not docs:
            print(f"FAIL {path}: no objects")
            failed += 1
        for doc in docs:
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                print(f"FAIL {path}: a document without apiVersion/kind")
                failed += 1
                continue
            name = (doc.get("metadata") or {}).get("name", "(kustomization)")
            what = f"{path} {doc['kind']}/{name}"
            key = f"{doc['apiVersion']}/{doc['kind']}"
            problems, how = [], ""
            if key in ours or key in theirs:
                schema, how = ours.get(key) or theirs[key]
                problems = errors_of(schema, doc)
            else:
                hows = []
                for version in args.k8s:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                        hows.append(version)
                    except kubernetes_validate.ValidationError as e:
                        at = ".".join(str(p) for p in e.path) or "(root)"
                        problems.append(f"Kubernetes {version}: {at}: {e.message}")
                    except SchemaNotFoundError:
                        problems.append(f"no schema for {key}: add it to scripts/schemas/third-party.yaml")
                        break
                how = f"Kubernetes {', '.join(hows)} schemas, strict"
            checked += 1
            if problems:
                failed += 1
                for p in problems:
                    print(f"FAIL {what}: {p}")
            else:
                print(f"ok   {what} ({how})")
    print(f"{checked} objects checked, {failed} failed")
    sys.exit(1 if failed or not checked else 0)


if __name__ == "__main__":
    main()
