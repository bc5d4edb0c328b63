#!/bin/sh
# Start the Alertmanager webhook receiver (flows/alerts.py) — the compose service alert-receiver, and
# what the tests run on 127.0.0.1 (tests/deploy/stack.py).
#   ROBUSTDX_ALERTS_HOST (127.0.0.1; 0.0.0.0 in a container), ROBUSTDX_ALERTS_PORT (9095);
#   PREFECT_API_URL: the Prefect server's API; ROBUSTDX_ALERT_TOKEN_FILE: the bearer secret (required).
set -eu
exec python -m robustdx.cli alert-receiver \
    --host "${ROBUSTDX_ALERTS_HOST:-127.0.0.1}" \
    --port "${ROBUSTDX_ALERTS_PORT:-9095}" \
    "$@"
