#!/bin/sh
# Start the robustdx BentoML service — the serve image's CMD, and what the tests run on 127.0.0.1
# (tests/deploy/stack.py), so the container starts exactly what is tested.
#   ROBUSTDX_SERVE_HOST (0.0.0.0), ROBUSTDX_SERVE_PORT (3000); the model is the production pointer in
#   $BENTOML_HOME (or $ROBUSTDX_MODEL_TAG); service settings: ROBUSTDX_* (see service/app.py).
set -eu
exec bentoml serve robustdx.service.app:RobustDx \
    --host "${ROBUSTDX_SERVE_HOST:-0.0.0.0}" \
    --port "${ROBUSTDX_SERVE_PORT:-3000}" \
    "$@"
