# shellcheck shell=bash
# Source this file (`. scripts/test-env.sh`) to get the CHRONOS_TEST_* variables
# written by `scripts/services.sh start` (MongoDB URI, S3 endpoint and credentials).
# Does nothing when the services have not been started.
if [ -f "${CHRONOS_RUN_DIR:-${CHRONOS_CACHE:-$HOME/.cache/chronos-test}/run}/env" ]; then
  # shellcheck source=/dev/null
  . "${CHRONOS_RUN_DIR:-${CHRONOS_CACHE:-$HOME/.cache/chronos-test}/run}/env"
fi
