# syntax=docker/dockerfile:1
# robustdx images, two targets from one file:
#
#   docker build --target serve -t robustdx-serve .   BentoML service only (pip extra "serve");
#                                                      CMD deploy/bin/serve.sh, HEALTHCHECK GET /readyz
#   docker build --target train -t robustdx-train .   Prefect worker + Ray + torch (extra "orchestrate");
#                                                      CMD deploy/bin/worker.sh, HEALTHCHECK GET /health
#
# The start commands are the deploy/bin scripts, which the test suite runs outside a container
# (tests/deploy/stack.py, tests/deploy/test_scripts.py), so the container starts exactly what is tested.
#
# GPU: the default image is already CUDA-capable. torch 2.14.1 from PyPI is a CUDA 12 build that ships its
# CUDA runtime as pip wheels (nvidia-*), and runs on the CPU and, on a host with the NVIDIA driver and the
# container toolkit (`docker run --gpus all ...`; compose: see the prefect-worker comment), on the GPU.
# To build on a CUDA base image anyway, pass one with Python 3.11 (python3 + its venv module) and
# groupadd/useradd, e.g. an image built FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 with python3.11-venv:
#   docker build --target train --build-arg PYTHON_IMAGE=<your cuda12 + python3.11 image> -t robustdx-train .
# A smaller CPU-only image: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# No secrets are baked in: tokens (ROBUSTDX_ADMIN_TOKEN) and URLs come from the environment at run time.

# Pinned by digest as well as tag (the multi-architecture index of python:3.11.14-slim-bookworm), so a
# re-pushed tag cannot change what is built. Renovate/dependabot can bump both together.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# one unprivileged user for every robustdx container (uid 10001: shared volumes stay writable across images)
RUN groupadd --system --gid 10001 robustdx \
    && useradd --system --uid 10001 --gid robustdx --home-dir /home/robustdx --create-home --shell /usr/sbin/nologin robustdx

# ---------------------------------------------------------------------------------------------------
# Dependencies first, from pyproject.toml alone, so that code changes do not reinstall torch.
FROM base AS deps
ARG PIP_VERSION=26.3
WORKDIR /src
RUN python3 -m venv /opt/venv && pip install --no-cache-dir "pip==${PIP_VERSION}"
COPY pyproject.toml ./
COPY deploy/bin/requirements.py /usr/local/bin/robustdx-requirements

FROM deps AS deps-serve
ARG TORCH_INDEX_URL=""
RUN python /usr/local/bin/robustdx-requirements serve > /tmp/requirements.txt \
    && pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt

FROM deps AS deps-train
ARG TORCH_INDEX_URL=""
# the orchestrate extra pins ray[tune,default,client]: Tune, the dashboard / job API (ray job submit) and the
# Ray client server of the head node
RUN python /usr/local/bin/robustdx-requirements orchestrate > /tmp/requirements.txt \
    && pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------------
# The package itself (dependencies are already in place: --no-deps keeps the resolved set unchanged).
FROM deps AS source
COPY README.md ./
COPY cli/ cli/
COPY core/ core/
COPY flows/ flows/
COPY service/ service/

FROM deps-serve AS build-serve
COPY --from=source /src /src
RUN pip install --no-cache-dir --no-deps /src

FROM deps-train AS build-train
COPY --from=source /src /src
RUN pip install --no-cache-dir --no-deps /src

# ---------------------------------------------------------------------------------------------------
FROM base AS serve
COPY --from=build-serve /opt/venv /opt/venv
WORKDIR /app
COPY deploy/bin/ /app/deploy/bin/
RUN mkdir -p /var/lib/robustdx/bentoml /var/lib/robustdx/feedback && chown -R robustdx:robustdx /var/lib/robustdx
ENV BENTOML_HOME=/var/lib/robustdx/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    ROBUSTDX_SERVE_HOST=0.0.0.0 \
    ROBUSTDX_SERVE_PORT=3000
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ROBUSTDX_SERVE_PORT', '3000'), timeout=4)"]
CMD ["/app/deploy/bin/serve.sh"]

# ---------------------------------------------------------------------------------------------------
FROM base AS train
COPY --from=build-train /opt/venv /opt/venv
WORKDIR /app
# configs/, deploy/bin/ and a prefect.yaml when there is one (.dockerignore allow-lists what enters);
# owned by root, so the runtime user can read the code and configurations but not change them
COPY . /app
# /tmp/ray: the Ray head's session files (compose volume ray-session; Grafana reads Ray's dashboards from it)
# /var/lib/robustdx/mlflow: the MLflow server's artifact store (compose volume mlflow-artifacts)
RUN mkdir -p /app/runs /app/data /tmp/ray \
        /var/lib/robustdx/bentoml /var/lib/robustdx/prefect /var/lib/robustdx/prefect-worker /var/lib/robustdx/prefect-receiver \
        /var/lib/robustdx/mlflow \
    && chown -R robustdx:robustdx /app/runs /app/data /tmp/ray /var/lib/robustdx
ENV BENTOML_HOME=/var/lib/robustdx/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    PREFECT_HOME=/var/lib/robustdx/prefect \
    PREFECT_WORK_POOL=robustdx \
    PREFECT_WORKER_WEBSERVER_PORT=8080 \
    ROBUSTDX_WORKDIR=/app
USER 10001:10001
# 8080: worker health; 4200: Prefect server; 8265 / 10001 / 6379: Ray dashboard, client, GCS
EXPOSE 8080 4200 8265 10001 6379
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PREFECT_WORKER_WEBSERVER_PORT', '8080'), timeout=4)"]
CMD ["/app/deploy/bin/worker.sh"]
