#!/usr/bin/env bash
# Validate the packaging: the Helm chart, manifests/, examples/, the Dockerfile. Every check
# prints what it checked; any failure fails the script; nothing is skipped.
#
#  1. helm lint --strict of charts/chronos with each charts/chronos/ci/*-values.yaml
#  2. values.schema.json: bad values must make `helm template` fail
#  3. every rendered object, manifests/install.yaml, `kubectl kustomize examples/tenant` and
#     every file in examples/ (but chronos.yaml, an engine configuration: `chronos check-config`)
#     against the Kubernetes schemas (1.27 and 1.37, strict), our CRDs' schemas, or subset
#     schemas of other projects' kinds (scripts/validate_manifests.py)
#  4. server-side dry-run of the same objects on the test Kubernetes API server, with our CRDs
#     applied (CEL rules, defaults, which kinds are served); the kinds it does not serve
#     (ServiceMonitor, Argo CD, Flux) are named, and were schema-checked in 3
#  5. the Dockerfile: hadolint, and its shape (multi-stage, distroless, non-root)
#
# Needs the test API server (scripts/kube-apiserver.sh start; scripts/test.sh runs this script
# after starting it). Tools come from scripts/tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n--- validate: %s\n' "$*"; }
die() {
  printf 'validate: FAILED: %s\n' "$*" >&2
  exit 1
}

eval "$(scripts/tools.sh env)"
HELM=$CHRONOS_HELM
KUBECTL=$CHRONOS_KUBECTL
PY="$(dirname "$CHRONOS_KUBERNETES_VALIDATE")/python"
CHART=charts/chronos
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

step "chart version = Cargo.toml version"
cargo_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
for field in version appVersion; do
  v=$(sed -n "s/^$field: *\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$CHART/Chart.yaml")
  [[ "$v" == "$cargo_version" ]] || die "$CHART/Chart.yaml $field is '$v', Cargo.toml says $cargo_version"
done
echo "chart $cargo_version = chronos $cargo_version"

step "helm lint --strict"
values_files=("$CHART"/ci/*-values.yaml)
((${#values_files[@]} > 0)) || die "no $CHART/ci/*-values.yaml"
for v in "${values_files[@]}"; do
  "$HELM" lint --strict "$CHART" -f "$v" || die "helm lint with $v"
  "$HELM" template chronos "$CHART" --namespace chronos-system -f "$v" >"$TMP/render-$(basename "$v" .yaml).yaml" ||
    die "helm template with $v"
done

step "values.schema.json refuses bad values"
bad_values=(
  "image.pullPolicy=Sometimes"
  "replicaCount=0"
  "logging.format=xml"
  "metrics.port=80"
  "securityContext.readOnlyRootFilesystem=false"
  "securityContext.allowPrivilegeEscalation=true"
  "podSecurityContext.runAsNonRoot=false"
  "watchNamespace=Not_A_Namespace"
  "resources.requests.cpu=lots"
  "typo=1"
)
for set in "${bad_values[@]}"; do
  if out=$("$HELM" template chronos "$CHART" --set "$set" 2>&1); then
    die "--set $set was accepted: values.schema.json must refuse it"
  fi
  grep -q 'values don.t meet the specifications of the schema\|at ./' <<<"$out" ||
    die "--set $set failed, but not by the schema: $out"
  echo "refused: --set $set"
done

step "kubectl kustomize examples/tenant"
"$KUBECTL" kustomize examples/tenant >"$TMP/kustomized-tenant.yaml" || die "kustomize build of examples/tenant"
want=$(cat examples/tenant/*.yaml | grep -c '^kind:' || true)
want=$((want - 1)) # kustomization.yaml itself
got=$(grep -c '^kind:' "$TMP/kustomized-tenant.yaml" || true)
[[ "$got" == "$want" ]] || die "kustomize built $got objects, the files in examples/tenant hold $want"
echo "examples/tenant builds: $got objects"

step "engine configuration example"
cargo run --quiet --locked -- check-config examples/chronos.yaml || die "examples/chronos.yaml"

step "schemas: Kubernetes 1.27 + 1.37 (strict), our CRDs, subset schemas of other projects' kinds"
mapfile -t example_files < <(find examples -name '*.yaml' ! -path examples/chronos.yaml | sort)
((${#example_files[@]} >= 10)) || die "expected at least 10 example files, found ${#example_files[@]}"
"$PY" scripts/validate_manifests.py --crds crds/chronos.dev.yaml --k8s 1.27 --k8s 1.37 \
  "$TMP"/render-*.yaml manifests/install.yaml "$TMP/kustomized-tenant.yaml" "${example_files[@]}" ||
  die "schema validation"

step "server-side dry-run on the test Kubernetes API server"
if [[ -z "${KUBECONFIG:-}" ]] || ! "$KUBECTL" get --raw '/readyz?exclude=informer-sync' >/dev/null 2>&1; then
  die "the test API server does not answer (KUBECONFIG=${KUBECONFIG:-unset}): run scripts/kube-apiserver.sh start and eval \"\$(scripts/kube-apiserver.sh env)\""
fi
# Our CRDs, as the operator tests apply them (same field manager).
"$KUBECTL" apply --server-side --force-conflicts --field-manager=chronos-tests -f crds/chronos.dev.yaml >/dev/null
"$KUBECTL" wait --for condition=established --timeout=60s -f crds/chronos.dev.yaml >/dev/null
for i in $(seq 1 100); do
  "$KUBECTL" get chronosdatabases.chronos.dev -A --request-timeout=5s >/dev/null 2>&1 && break
  ((i < 100)) || die "the chronos.dev CRDs are not served"
  sleep 0.1
done
# Split off the kinds this server does not serve; name them.
NOT_SERVED="ServiceMonitor Application GitRepository Kustomization"
"$PY" - "$TMP" "$NOT_SERVED" "$TMP"/render-*.yaml manifests/install.yaml "$TMP/kustomized-tenant.yaml" \
  "${example_files[@]}" <<'PYEOF'
import os, sys, yaml
tmp, skip, files = sys.argv[1], set(sys.argv[2].split()), sys.argv[3:]
for i, path in enumerate(files):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    keep = [d for d in docs if d.get("kind") not in skip]
    for d in docs:
        if d.get("kind") in skip:
            print(f"not served here (schema-checked above): {path} {d['kind']}/{(d.get('metadata') or {}).get('name', '')}")
    if keep:
        with open(os.path.join(tmp, f"dry-{i:02d}.yaml"), "w") as f:
            f.write(f"# {path}\n")
            yaml.safe_dump_all(keep, f)
        with open(os.path.join(tmp, f"dry-{i:02d}.src"), "w") as f:
            f.write(path)
PYEOF
for f in "$TMP"/dry-*.yaml; do
  src=$(cat "${f%.yaml}.src")
  "$KUBECTL" apply --server-side --dry-run=server --force-conflicts --field-manager=chronos-validate -f "$f" \
    >"$TMP/dry.out" 2>&1 || {
    cat "$TMP/dry.out" >&2
    die "server-side dry-run of $src"
  }
  echo "accepted by the API server: $src ($(grep -c . "$TMP/dry.out") objects)"
done
# The dry-run does check our schemas: an invalid resource is refused.
sed 's/"on":/on:/' examples/tenant/collection-orders.yaml >"$TMP/bad-collection.yaml"
if "$KUBECTL" apply --server-side --dry-run=server -f "$TMP/bad-collection.yaml" >"$TMP/dry.out" 2>&1; then
  die "the API server accepted a ChronosCollection whose counter has no 'on' (YAML 1.1 reads a bare on as true)"
fi
echo "refused as it should be: a counter rule with a bare 'on' key ($(tail -n 1 "$TMP/dry.out" | cut -c1-120))"

step "README: the install and upgrade commands, with --dry-run=server"
# Every command of the sh blocks of "Install on Kubernetes" and "Operations", as written plus
# --dry-run=server (the test API server runs no pods). The other sections' commands are run
# for real by tests/it/examples.rs.
"$PY" - README.md "$TMP/readme-commands.txt" <<'PYEOF'
import sys
text, out = open(sys.argv[1]).read(), sys.argv[2]
commands = []
for heading in ("## Install on Kubernetes", "## Operations"):
    section = text.split("\n" + heading + "\n")[1].split("\n## ")[0]
    for block in section.split("```sh\n")[1:]:
        body = block.split("```")[0].replace("\\\n", " ")
        commands += [l.strip() for l in body.splitlines() if l.strip() and not l.strip().startswith("#")]
if len(commands) < 4:
    sys.exit(f"expected the install and upgrade commands in README.md, found {commands}")
open(out, "w").write("\n".join(commands) + "\n")
PYEOF
while IFS= read -r cmd; do
  PATH="$(dirname "$HELM"):$PATH" bash -c "set -euo pipefail; $cmd --dry-run=server" >"$TMP/cmd.out" 2>&1 || {
    cat "$TMP/cmd.out" >&2
    die "README command failed: $cmd --dry-run=server"
  }
  echo "ran: $cmd --dry-run=server"
done <"$TMP/readme-commands.txt"

step "Dockerfile"
"$CHRONOS_HADOLINT" Dockerfile || die "hadolint Dockerfile"
froms=$(grep -c '^FROM ' Dockerfile)
((froms >= 2)) || die "Dockerfile: expected a multi-stage build, found $froms FROM"
last_from=$(grep '^FROM ' Dockerfile | tail -n 1)
[[ "$last_from" =~ gcr.io/distroless/|^FROM\ scratch ]] || die "Dockerfile: the final stage is not distroless/scratch: $last_from"
last_user=$(grep '^USER ' Dockerfile | tail -n 1)
[[ "$last_user" =~ ^USER\ (65532|nonroot) ]] || die "Dockerfile: the final USER is not non-root: '${last_user:-none}'"
grep -q '^ENTRYPOINT \["/usr/local/bin/chronos"\]' Dockerfile || die "Dockerfile: the entrypoint is not the chronos binary"
echo "Dockerfile: hadolint clean, $froms stages, final '$last_from', '$last_user'"

printf '\nvalidate: chart, manifests, examples and Dockerfile OK\n'
