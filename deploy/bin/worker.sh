#!/bin/sh
# Start a Prefect worker for the robustdx flows — the train image's CMD (compose service prefect-worker),
# and what tests/deploy/test_scripts.py runs against a real Prefect server.
#   PREFECT_API_URL: the Prefect server's API; PREFECT_WORK_POOL (robustdx): the process work pool,
#   created on first start. Deployments: prefect.yaml (prefect deploy --all) or flows/schedule.py.
#   Health: GET /health on PREFECT_WORKER_WEBSERVER_HOST:PREFECT_WORKER_WEBSERVER_PORT (0.0.0.0:8080),
#   the image's HEALTHCHECK.
set -eu
exec prefect worker start \
    --pool "${PREFECT_WORK_POOL:-robustdx}" \
    --type process \
    --with-healthcheck \
    "$@"
