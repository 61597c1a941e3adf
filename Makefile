# terminal-bridge developer entry points.  `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-bookworm lint lint-bookworm test-odoo lint-odoo bench bench-journal bench-pi soak fuzz deb check-deb ci \
        clean help

help:
	@echo "make run            start the bridge in demo mode (simulated terminals, self-signed TLS);"
	@echo "                    PORT=... TERMINAL_PORT=... choose its ports (default 8443, 18888 and up)"
	@echo "make test           run the test suite in a virtual environment (current PyPI releases)"
	@echo "make test-bookworm  run the test suite on Debian bookworm's own python3-* packages"
	@echo "make test-odoo      the Odoo addons (odoo_addons/) under Odoo's own test runner on 19.0 and 18.0, with"
	@echo "                    PostgreSQL, the real bridge daemon and headless Chromium; Odoo's source trees are read"
	@echo "                    from ODOO_19_SRC (default $(ODOO_19_SRC)) and ODOO_18_SRC (default $(ODOO_18_SRC))"
	@echo "make lint           ruff and mypy (from PyPI, in the virtual environment) on the bridge's code"
	@echo "make lint-bookworm  mypy from Debian (python3-mypy) against bookworm's own python3-* packages"
	@echo "make lint-odoo      pylint-odoo on the Odoo addons"
	@echo "make bench          run the benchmark and print its figures"
	@echo "make soak           an hour of 50 terminals x 10 clients: is the bridge's memory flat, any error?"
	@echo "make bench-pi       the benchmark with the bridge held to a quarter of one core (needs root)"
	@echo "make bench-journal  what a big journal costs (10k to 2M payments; half an hour, 7 GB of disk)"
	@echo "make fuzz           fuzz every parser of outside input, FUZZ_INPUTS (1000000) each; prints inputs and crashes"
	@echo "make deb            build the .deb into out/ (on Debian bookworm)"
	@echo "make check-deb      build, lint, install and smoke-test the .deb (needs root)"

$(STAMP): setup.cfg pyproject.toml
	scripts/ensure-system-deps.sh dev
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

# make run PORT=9443 TERMINAL_PORT=19888: other ports than 8443, 18888-18890 and 18898 (a second demo, a busy port).
PORT ?= 8443
TERMINAL_PORT ?= 18888

run: $(STAMP)
	$(VENV)/bin/terminal-bridge demo --dir demo --port $(PORT) --terminal-port $(TERMINAL_PORT)

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

test-bookworm:
	scripts/ensure-system-deps.sh bookworm
	PYTHONPATH=$(CURDIR) /usr/bin/python3 -m pytest $(PYTEST_ARGS)

# Lint: ruff reads source text, so one run (from the venv) covers both stacks; mypy checks the code against the
# libraries it imports, so it runs on both: PyPI's mypy against the venv's releases, Debian's python3-mypy (1.0)
# against bookworm's packages.  Settings and the modules not yet checked: pyproject.toml.
lint: $(STAMP)
	test -x $(VENV)/bin/ruff -a -x $(VENV)/bin/mypy || $(VPY) -m pip install --quiet ruff mypy
	$(VENV)/bin/ruff check bridge tests bench scripts
	$(VENV)/bin/mypy

lint-bookworm:
	scripts/ensure-system-deps.sh lint-bookworm
	/usr/bin/python3 -m mypy

# Odoo's source trees: not in this repository (docs/odoo.md says how to get them).
ODOO_19_SRC ?= /opt/odoo-src/19.0
ODOO_18_SRC ?= /opt/odoo-src/18.0
export ODOO_19_SRC ODOO_18_SRC

test-odoo:
	scripts/test-odoo.sh

LINT_VENV ?= .venv-lint
ODOO_ADDONS = $(patsubst %/__manifest__.py,%,$(wildcard odoo_addons/*/__manifest__.py))
lint-odoo:
	test -x $(LINT_VENV)/bin/pylint || { $(PYTHON) -m venv $(LINT_VENV) && $(LINT_VENV)/bin/pip install --quiet pylint-odoo; }
	$(LINT_VENV)/bin/pylint --rcfile=odoo_addons/.pylintrc --disable=manifest-version-format $(ODOO_ADDONS)

bench: $(STAMP)
	$(VPY) bench/bench.py $(BENCH_ARGS)

# The journal's growth (docs/performance.md): the curve at 10k, 100k, 1M, 2M payments, then make bench with an
# empty journal and with 2M payments, alternating, twice each.  About 30 min and 7 GB of disk at the peak.
bench-journal: $(STAMP)
	$(VPY) bench/journal_growth.py $(BENCH_ARGS)
	$(VPY) bench/journal_growth.py --latency 2000000

# An hour of 50 terminals x 10 clients: the bridge's memory flat within 2 MB, 0 errors (not in CI).
soak: $(STAMP)
	$(VPY) bench/soak.py $(SOAK_ARGS)

# The benchmark with the bridge held to a quarter of one core by a cgroup CPU quota (a Raspberry Pi 3's stand-in;
# needs root).  BENCH_ARGS go to bench.py.
bench-pi: $(STAMP)
	$(VPY) bench/pi.py -- $(BENCH_ARGS)

FUZZ_INPUTS ?= 1000000
fuzz: $(STAMP)
	$(VPY) -m tests.test_fuzz --inputs $(FUZZ_INPUTS)

deb:
	packaging/build-deb.sh

check-deb:
	.ci/deb-check.sh

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) $(LINT_VENV) out build *.egg-info .pytest_cache .hypothesis
