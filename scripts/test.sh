#!/usr/bin/env bash
# The whole test suite against real services: installs (cached) and starts MongoDB and the S3
# server, runs every test, and stops the services again on exit. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh racing` runs the tests whose names contain "racing").
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh start
trap 'scripts/services.sh stop' EXIT
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh

cargo test --locked "$@"
