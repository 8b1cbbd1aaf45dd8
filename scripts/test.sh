#!/usr/bin/env bash
# The whole test suite against real services: installs (cached) and starts MongoDB, the S3
# server and a Kubernetes API server (scripts/kube-apiserver.sh), runs every test, and stops
# them again on exit. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh racing` runs the tests whose names contain "racing").
set -euo pipefail
cd "$(dirname "$0")/.."

# Set first, so a failed start still stops what did start (stopping what isn't running is quiet).
trap 'scripts/kube-apiserver.sh stop; scripts/services.sh stop' EXIT
scripts/services.sh start
scripts/kube-apiserver.sh start
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
# The test Kubernetes API server's KUBECONFIG and CHRONOS_TEST_KUBE* (the operator tests).
eval "$(scripts/kube-apiserver.sh env)"

cargo test --locked "$@"
# The fault campaign once more with write packing off (its engines pack by default on S3:
# `engine.packWrites: auto`), so both ways of storing payloads go through every scenario.
if [ "$#" -eq 0 ]; then cargo test --locked --test faults -- --pack-writes off; fi
if [ "$#" -eq 0 ]; then cargo build --locked --bin chronos; scripts/schemathesis.sh; fi
# Chart, manifests, examples, Dockerfile: schemas + server-side dry-run on the test API server.
if [ "$#" -eq 0 ]; then scripts/validate.sh; fi
if [ "$#" -eq 0 ]; then cargo bench --locked --profile dev --bench throughput -- --smoke; fi
if [ "$#" -eq 0 ]; then cargo bench --locked --profile dev --bench history -- --smoke; fi
if [ "$#" -eq 0 ]; then cargo bench --locked --profile dev --bench shred -- --smoke; fi
