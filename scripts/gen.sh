#!/usr/bin/env bash
# Regenerate every generated file: crds/ holds `chronos crds` (the operator's CRDs), one file.
# CI runs this and fails when the result differs from what is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run --quiet --locked -- crds >crds/chronos.dev.yaml.tmp
mv crds/chronos.dev.yaml.tmp crds/chronos.dev.yaml
