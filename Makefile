# citypost: the two commands a newcomer needs are `make demo` and `make test`.
# Both bootstrap first: Debian packages (etcd-server, mosquitto, openssl: the
# tests' independent check of the PKI; chromium: the web console's browser tests)
# and a .venv
# with the project installed editable. Re-running is cheap: a stamp file
# records that the venv matches pyproject.toml.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.citypost-installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEBIAN_PACKAGES := etcd-server etcd-client mosquitto openssl chromium fonts-dejavu-core
PROTO_SRC := $(wildcard protos/citypost/v1/*.proto)

.PHONY: bootstrap system-packages demo test unit integration protos protos-check vendor lint bench clean

bootstrap: system-packages $(STAMP)

system-packages:
	@if ! command -v etcd >/dev/null || ! command -v openssl >/dev/null || \
	  ! command -v chromium >/dev/null || [ ! -d /usr/share/fonts/truetype/dejavu ] || \
	  ! { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; }; then \
	  echo "bootstrap: installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES); \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "citypost needs Python >= 3.11 (set PYTHON=...)")'
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: bootstrap
	$(VENV)/bin/citypost demo $(ARGS)

test: bootstrap protos-check lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: bootstrap
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: bootstrap
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

protos: bootstrap
	$(PY) -m protos.generate

protos-check: bootstrap
	$(PY) -m protos.generate --check

vendor: bootstrap
	$(PY) -m console.web.vendor_sync

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: bootstrap
	$(PY) -m bench.ingest
	$(PY) -m bench.ingest_actors
	$(PY) -m bench.command

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
