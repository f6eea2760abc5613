# Outpost: `make demo` runs the main job, `make test` runs the tests.
# Both set up what they need on a fresh Debian machine (virtual environment,
# Python packages, Debian packages when run as root).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEB_PACKAGES := iproute2 iputils-ping iperf3 tmux tshark procps nftables \
	strongswan-charon strongswan-swanctl strongswan-pki libcharon-extra-plugins \
	libstrongswan-standard-plugins libstrongswan-extra-plugins

.PHONY: test lint typecheck pytest bench demo demo-tui debs venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Install the Debian packages the system, interop and bench tiers need, only
# those missing, only as root (a developer laptop without root skips them).
debs:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else echo "not root: skipping Debian packages$$missing"; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check common tests bench

typecheck: venv
	$(VENV)/bin/mypy --strict common/

pytest: venv debs
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: venv debs lint typecheck pytest

bench: venv debs
	$(PY) bench/esp.py
	$(PY) bench/tunnel.py
	$(PY) bench/ike.py
	$(PY) bench/scale.py

# Three namespaces (office LAN, concentrator, laptop), the real concentrator and
# client, ping and iperf3 through the tunnel, a few lines of results; as root.
demo: venv debs
	$(PY) bench/demo.py

# The same lab, but the laptop runs the TUI in this terminal (c connect, q quit).
demo-tui: venv debs
	$(PY) bench/demo.py --tui

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
