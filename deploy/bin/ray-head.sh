#!/bin/sh
# Start a Ray head node in the foreground (compose service ray-head; the train image). Sweeps reach it at
# RAY_ADDRESS=ray://ray-head:10001 (Ray client) or with `ray job submit --address http://ray-head:8265`.
#   RAY_HEAD_HOST (0.0.0.0) binds the dashboard; RAY_PORT (6379) GCS; RAY_DASHBOARD_PORT (8265);
#   RAY_CLIENT_PORT (10001); RAY_METRICS_PORT (8080, scraped by Prometheus); RAY_NUM_CPUS (all).
set -eu
exec ray start --head --block \
    --port "${RAY_PORT:-6379}" \
    --dashboard-host "${RAY_HEAD_HOST:-0.0.0.0}" \
    --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" \
    --ray-client-server-port "${RAY_CLIENT_PORT:-10001}" \
    --metrics-export-port "${RAY_METRICS_PORT:-8080}" \
    ${RAY_NUM_CPUS:+--num-cpus "$RAY_NUM_CPUS"} \
    "$@"
