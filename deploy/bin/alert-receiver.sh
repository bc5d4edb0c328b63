#!/bin/sh
# Start the Alertmanager webhook receiver (flows/alerts.py) — the compose service alert-receiver, and
# what the tests run on 127.0.0.1 (tests/deploy/stack.py).
#   ROBUSTDX_ALERTS_HOST (0.0.0.0), ROBUSTDX_ALERTS_PORT (9095); PREFECT_API_URL: the Prefect server's API.
set -eu
exec python -m robustdx.flows.alerts \
    --host "${ROBUSTDX_ALERTS_HOST:-0.0.0.0}" \
    --port "${ROBUSTDX_ALERTS_PORT:-9095}" \
    "$@"
