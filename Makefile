# robustdx — `make demo` and `make test` set everything up themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo test test-unit test-gpu test-deploy timings figures bench bench-asha lint images stack up down clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## / — /'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 come from this machine's disk through pip (see FACTS.md)
	$(PY) -m pip install --quiet -e '.[orchestrate,serve,dev]'
	# the tests' reference PGD; its requests~=2.25.1 pin clashes with MLflow's, and it needs nothing more (see pyproject.toml)
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with every extra (about 2-3 minutes the first time)

demo: venv  ## synthetic data -> Ray Tune sweep -> train the best adv-SupCon -> gated promotion (Prefect), then serve it and call /predict and /explain
	$(VENV)/bin/robustdx demo
	BENTOML_HOME=$(CURDIR)/runs/bentoml $(VENV)/bin/robustdx serve-demo --out runs/demo/serve

test: venv  ## ruff, the import-layer contracts, the whole test suite (GPU tests deselected where torch sees no CUDA)
	$(VENV)/bin/ruff check core flows service tests benchmarks deploy docs
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv  ## fast unit tests only
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-gpu: venv  ## the GPU tests (bf16 autocast + channels_last really engaged); fails where torch sees no CUDA
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

timings: venv  ## fresh clone beside this one: time make venv / demo / test -> docs/timings.json, README figures (~30 min)
	$(PY) docs/timings.py

figures: venv  ## re-render the README's figures from docs/timings.json and benchmarks/results/*.json
	$(PY) docs/figures.py

bench: venv  ## training-step throughput benchmark (writes benchmarks/results/train_throughput.json)
	$(PY) benchmarks/train_throughput.py

bench-asha: venv  ## ASHA vs every trial to the end on the demo sweep (writes benchmarks/results/asha_vs_full.json; ~5 min)
	$(PY) benchmarks/asha_vs_full.py

lint: venv  ## ruff + import contracts + hadolint
	$(VENV)/bin/ruff check core flows service tests benchmarks deploy docs
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile

test-deploy: venv  ## Prometheus rules, Alertmanager, dashboards, compose, Dockerfile, alert -> Prefect event (~1 min)
	$(PY) -m pytest tests/deploy tests/unit/flows/test_alerts.py tests/unit/flows/test_localstack.py tests/integration/test_alert_to_event.py $(PYTEST_ARGS)

images:  ## build both images (needs Docker)
	docker build --target serve -t robustdx-serve:local . && docker build --target train -t robustdx-train:local .

stack:  ## start the compose stack (needs Docker); creates its secrets on the first run
	deploy/make-secrets.sh
	docker compose -f deploy/compose.yaml up -d --build

up: venv  ## the whole stack under supervisord on 127.0.0.1, no Docker: Prefect UI :4200, MLflow UI :5000, service :3000, Prometheus :9090, Alertmanager :9093, Pushgateway :9091 (first run retrains a model, ~3 min)
	deploy/bin/install-tools.sh monitoring
	$(VENV)/bin/robustdx stack up

down:  ## stop what `make up` started (supervisorctl shutdown)
	$(VENV)/bin/robustdx stack down

clean:  ## stop a `make up` stack, remove runs and synthetic data (keeps the venv)
	if [ -x $(PY) ]; then $(VENV)/bin/robustdx stack down; fi
	rm -rf runs data/synthetic .pytest_cache
