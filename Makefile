# MetTrack developer commands. Every target creates/updates ./.venv from pyproject.toml itself;
# the install step is skipped when pyproject.toml has not changed since the last install.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PG_URL ?= postgres://postgres@127.0.0.1:5432/mettrack
REDIS_URL ?= redis://127.0.0.1:6379/0
DEMO_DB ?= sqlite:///$(CURDIR)/var/demo.sqlite3
DEMO_DICOM_PORT ?= 11112

.PHONY: venv demo demo-data serve test cluster-test lint bench services browser viewer dicom-tools pacs-tools clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Offline first: when every pin is already installed (second run, closed network) nothing is fetched.
	$(PY) -m pip install -q --disable-pip-version-check --no-index --no-build-isolation -e '.[dev]' >/dev/null 2>&1 \
	  || { $(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel \
	       && $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'; }
	touch $(STAMP)

venv: $(STAMP)

## make demo: embedded SQLite database, demo trial, whole pipeline, dashboard on http://127.0.0.1:8000,
## DICOM listener METTRACK on 127.0.0.1:11112 (send var/demo-study with storescu: README "PACS")
demo: venv viewer
	mkdir -p var
	DATABASE_URL=$(DEMO_DB) CELERY_BROKER_URL= DEBUG=1 MEDIA_ROOT=$(CURDIR)/var/media $(PY) manage.py migrate --noinput
	DATABASE_URL=$(DEMO_DB) CELERY_BROKER_URL= DEBUG=1 MEDIA_ROOT=$(CURDIR)/var/media $(PY) manage.py load_demo
	DATABASE_URL=$(DEMO_DB) CELERY_BROKER_URL= DEBUG=1 MEDIA_ROOT=$(CURDIR)/var/media $(PY) manage.py demo_pipeline
	DATABASE_URL=$(DEMO_DB) CELERY_BROKER_URL= DEBUG=1 MEDIA_ROOT=$(CURDIR)/var/media $(PY) manage.py write_demo_study var/demo-study
	@# The DICOM listener runs beside the dashboard (README "PACS"): stopped with it.
	DATABASE_URL=$(DEMO_DB) CELERY_BROKER_URL= DEBUG=1 MEDIA_ROOT=$(CURDIR)/var/media $(PY) manage.py dicom_listener \
	  --bind 127.0.0.1 --port $(DEMO_DICOM_PORT) --allow DEMO-MODALITY@127.0.0.1 --quiet-period 10 & \
	  LISTENER=$$!; trap 'kill $$LISTENER' EXIT INT TERM; \
	  DATABASE_URL=$(DEMO_DB) CELERY_BROKER_URL= DEBUG=1 MEDIA_ROOT=$(CURDIR)/var/media $(PY) manage.py runserver 127.0.0.1:8000

## Test processes (pytest-xdist): one per core, at most 4; whole files per process, so a module's fixtures
## are built once. Each process has its own test database, queues, ports and a share of the cores.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

## make test: lint, then the whole suite against the real PostgreSQL and Redis
test: venv lint services browser viewer dicom-tools pacs-tools
	DATABASE_URL=$(PG_URL) CELERY_BROKER_URL=$(REDIS_URL) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

## make cluster-test: only the compose topology as processes (gunicorn, GPU and default workers, beat);
## make test runs it too
cluster-test: venv services
	DATABASE_URL=$(PG_URL) CELERY_BROKER_URL=$(REDIS_URL) $(PY) -m pytest tests/deployment/test_cluster.py $(PYTEST_ARGS)

## make lint: ruff (lint, complexity, format), import-linter layers, mypy with the Django and DRF stubs
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	DEBUG=1 $(VENV)/bin/mypy

services:
	scripts/ensure-services.sh

## browser: Debian's Chromium (Playwright drives it) and the npm packages (axe-core for the tests, Niivue)
NODE_STAMP := node_modules/.installed-stamp
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

browser: $(NODE_STAMP)
	scripts/ensure-chromium.sh

## viewer: the visit page's WebGL viewer (Niivue, pinned in package.json) copied from node_modules into the
## dashboard's static files (git-ignored: 2.3 MB that the lockfile reproduces), served by Django, no CDN
VIEWER_BUNDLE := trials/static/dashboard/vendor/niivue.umd.js
$(VIEWER_BUNDLE): $(NODE_STAMP)
	mkdir -p $(dir $@)
	cp node_modules/@niivue/niivue/dist/niivue.umd.js $@

viewer: $(VIEWER_BUNDLE)

## dicom-tools: Debian's plastimatch and dicom3tools, which the RTSTRUCT tests read the contours with
dicom-tools:
	scripts/ensure-dicom-tools.sh

## pacs-tools: Debian's orthanc, orthanc-dicomweb and dcmtk, the PACS and modality of the PACS tests
pacs-tools:
	scripts/ensure-pacs-tools.sh

## make bench: every benchmark (bench/bench_*.py); database ones use PostgreSQL like the tests
bench: venv services
	DATABASE_URL=$(PG_URL) CELERY_BROKER_URL=$(REDIS_URL) $(PY) -m bench $(BENCH)

clean:
	rm -rf var .pytest_cache node_modules
