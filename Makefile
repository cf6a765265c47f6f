# radps: `make demo` runs the main job, `make test` runs the tests; both create the venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-radps
PYTEST_ARGS ?=

.PHONY: venv deps demo test test-cold e2e lint format crd bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv resolves and installs in seconds with a warm cache; plain pip is the fallback.
	# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set, Python never
	# caches it, and every process (a flow run's first task: ~10 s) recompiles Prefect,
	# kubernetes and xarray from source.
	( $(BIN)/python -m pip install -q uv && \
	  $(BIN)/python -m uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test,bench]' ) || \
	  $(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

venv: $(STAMP)

# Everything the tests build or download on first use, before pytest: host packages, Kubernetes,
# etcd, CoreDNS, helm, the local images and the radps image (see hack/deps.sh). Cold, about
# 25 min on 2 cores; warm, seconds.
deps: venv
	hack/deps.sh

demo: venv
	$(BIN)/radps run manifests/examples/synthesize-demo.yaml manifests/examples/imaging-demo.yaml

# Everything, the e2e on a real node included (it skips without root or a node: see README).
# pytest runs under hack/no-leftovers.py: a process the tests leave running fails the target.
test: venv deps
	hack/no-leftovers.py -- $(BIN)/python -m pytest $(PYTEST_ARGS)

# `make test` twice in a fresh clone of HEAD with empty caches (cold, then warm), as a new
# machine or CI without caches runs it; prints both wall times (see hack/test-cold.sh).
test-cold:
	hack/test-cold.sh

# Only the whole system on a real node: image, helm install, faults mid-run (cancel, operator
# killed, flow pod deleted), security (RBAC, admission, Prefect auth, enforced NetworkPolicy),
# the real-VLA PipelineRun (on the data volume, and on the object store without one), an
# interactive run answered through kubectl, helm test, helm uninstall.
e2e: venv deps
	hack/no-leftovers.py -- $(BIN)/python -m pytest tests/e2e/test_faults.py tests/e2e/test_security.py tests/e2e/test_object_store.py tests/e2e/test_schedules.py tests/e2e/test_interactive.py tests/e2e/test_mission.py $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

crd: venv
	$(BIN)/radps crd > manifests/crd/pipelineruns.radps.io.yaml
	$(BIN)/radps crd --schedules > manifests/crd/pipelineschedules.radps.io.yaml
	cp manifests/crd/pipelineruns.radps.io.yaml manifests/crd/pipelineschedules.radps.io.yaml charts/radps/crds/
	$(BIN)/radps crd --dask > charts/radps/crds/daskclusters.kubernetes.dask.org.yaml

bench: venv
	$(BIN)/python -m tests.benchmarks --out results

clean:
	rm -rf demo-output results .pytest_cache

include hack/cluster.mk
