#!/usr/bin/env bash
# Smoke test of the test Kubernetes API server started by scripts/kube-apiserver.sh:
# core types as CRDs through kubectl (JSON, protobuf, strategic merge patch, server-side
# apply), a CRD of our own with a status subresource, namespaces, and a Helm
# install/upgrade/rollback/uninstall. Leaves the server as it found it (deletes what it made).
#
#   scripts/kube-apiserver.sh start && scripts/kube/smoke-test.sh
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
eval "$("$SCRIPT_DIR/../kube-apiserver.sh" env)"
K=$CHRONOS_TEST_KUBECTL
H=$CHRONOS_TEST_HELM
NS=chronos-smoke
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
check() { # check NAME EXPECTED ACTUAL
  if [[ "$2" == "$3" ]]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf 'FAIL %s: expected [%s], got [%s]\n' "$1" "$2" "$3" >&2
  fi
}
get() { "$K" -n "$NS" get "$@" 2>&1 || true; }

# Objects in a namespace that has no Namespace object (no NamespaceLifecycle).
cat >"$WORK/objs.yaml" <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $NS, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: nginx:1.27, env: [{name: A, value: "1"}]}
      - {name: side, image: busybox}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $NS}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 80}]}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: $NS}
type: Opaque
data: {password: aHVudGVyMg==}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: leader, namespace: $NS}
spec: {holderIdentity: pod-a, leaseDurationSeconds: 15}
EOF
"$K" apply -f "$WORK/objs.yaml" >/dev/null
check "deployment replicas" 2 "$(get deploy web -o jsonpath='{.spec.replicas}')"
check "service port" 80 "$(get svc web -o jsonpath='{.spec.ports[0].port}')"
check "secret data" aHVudGVyMg== "$(get secret creds -o jsonpath='{.data.password}')"
check "lease holder" pod-a "$(get lease leader -o jsonpath='{.spec.holderIdentity}')"

# Client-side apply again (a strategic merge patch), kubectl patch (SMP, merge by name).
sed -i 's/replicas: 2/replicas: 3/; s/nginx:1.27/nginx:1.28/' "$WORK/objs.yaml"
"$K" apply -f "$WORK/objs.yaml" >/dev/null
check "apply update" "3 nginx:1.28" "$(get deploy web -o jsonpath='{.spec.replicas} {.spec.template.spec.containers[0].image}')"
"$K" -n "$NS" patch deploy web -p '{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"busybox:2"}]}}}}' >/dev/null
check "smp by merge key" "nginx:1.28 busybox:2 A" \
  "$(get deploy web -o jsonpath='{.spec.template.spec.containers[*].image} {.spec.template.spec.containers[0].env[0].name}')"

# Server-side apply: field manager, conflict, force.
printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: %s}\nspec: {replicas: 5}\n' "$NS" >"$WORK/ssa.yaml"
if "$K" apply --server-side --field-manager=chronos-operator -f "$WORK/ssa.yaml" >/dev/null 2>&1; then
  check "ssa conflict" conflict none
else
  check "ssa conflict" conflict conflict
fi
"$K" apply --server-side --field-manager=chronos-operator --force-conflicts -f "$WORK/ssa.yaml" >/dev/null
check "ssa force" 5 "$(get deploy web -o jsonpath='{.spec.replicas}')"
check "ssa manager" 1 "$(get deploy web -o jsonpath='{.metadata.managedFields[*].manager}' | tr ' ' '\n' | grep -c '^chronos-operator$')"

# Status and scale subresources.
"$K" -n "$NS" patch deploy web --subresource=status --type merge -p '{"status":{"readyReplicas":5}}' >/dev/null
check "status subresource" 5 "$(get deploy web -o jsonpath='{.status.readyReplicas}')"
"$K" -n "$NS" scale deploy web --replicas=1 >/dev/null
check "scale subresource" 1 "$(get deploy web -o jsonpath='{.spec.replicas}')"

# Typed client-go paths (protobuf bodies): kubectl create configmap/secret.
"$K" -n "$NS" create configmap cfg --from-literal=a=b >/dev/null
"$K" -n "$NS" create secret generic gen --from-literal=a=b >/dev/null
check "protobuf configmap" b "$(get cm cfg -o jsonpath='{.data.a}')"
check "protobuf secret" Yg== "$(get secret gen -o jsonpath='{.data.a}')"

# A CRD of our own with a status subresource and a validated schema.
cat >"$WORK/crd.yaml" <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: smoketests.chronos.example.com}
spec:
  group: chronos.example.com
  scope: Namespaced
  names: {plural: smoketests, singular: smoketest, kind: SmokeTest, listKind: SmokeTestList}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [schedule]
            properties:
              schedule: {type: string, minLength: 1}
              keep: {type: integer, minimum: 1, default: 7}
          status:
            type: object
            properties:
              phase: {type: string, enum: [Pending, Running, Done]}
EOF
"$K" apply --server-side -f "$WORK/crd.yaml" >/dev/null
"$K" wait --for=condition=Established crd/smoketests.chronos.example.com --timeout=30s >/dev/null
for _ in $(seq 50); do "$K" -n "$NS" get smoketests >/dev/null 2>&1 && break; sleep 0.2; done
printf 'apiVersion: chronos.example.com/v1alpha1\nkind: SmokeTest\nmetadata: {name: nightly, namespace: %s}\nspec: {schedule: "0 3 * * *"}\n' "$NS" |
  "$K" apply --server-side --field-manager=chronos-operator -f - >/dev/null
check "crd default" 7 "$(get smoketest nightly -o jsonpath='{.spec.keep}')"
"$K" -n "$NS" patch smoketest nightly --subresource=status --type merge -p '{"status":{"phase":"Running"}}' >/dev/null
check "crd status" "Running 1" "$(get smoketest nightly -o jsonpath='{.status.phase} {.metadata.generation}')"
if printf 'apiVersion: chronos.example.com/v1alpha1\nkind: SmokeTest\nmetadata: {name: bad, namespace: %s}\nspec: {keep: 0}\n' "$NS" |
  "$K" create -f - >/dev/null 2>&1; then
  check "crd validation" rejected accepted
else
  check "crd validation" rejected rejected
fi

# Namespaces (stored only).
"$K" create namespace "$NS-extra" >/dev/null
"$K" label namespace "$NS-extra" team=a >/dev/null
check "namespace" a "$("$K" get namespace "$NS-extra" -o jsonpath='{.metadata.labels.team}')"
"$K" delete namespace "$NS-extra" >/dev/null

# Helm: install, upgrade (SMP), rollback, uninstall (release storage: Secrets via protobuf).
"$H" create "$WORK/chart" >/dev/null
rm -rf "$WORK/chart/templates/tests" "$WORK/chart/templates/"{hpa.yaml,ingress.yaml,httproute.yaml,NOTES.txt}
"$H" install smoke "$WORK/chart" -n "$NS" >/dev/null
"$H" upgrade smoke "$WORK/chart" -n "$NS" --set replicaCount=3 >/dev/null
check "helm upgrade" 3 "$(get deploy smoke-chart -o jsonpath='{.spec.replicas}')"
"$H" rollback smoke 1 -n "$NS" >/dev/null
check "helm rollback" 1 "$(get deploy smoke-chart -o jsonpath='{.spec.replicas}')"
check "helm status" deployed "$("$H" status smoke -n "$NS" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["info"]["status"])')"
"$H" uninstall smoke -n "$NS" >/dev/null

# Clean up.
"$K" delete -f "$WORK/objs.yaml" --wait=false >/dev/null
"$K" -n "$NS" delete configmap cfg >/dev/null
"$K" -n "$NS" delete secret gen >/dev/null
"$K" delete crd smoketests.chronos.example.com >/dev/null

printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
