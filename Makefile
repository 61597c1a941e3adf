# terminal-bridge developer entry points.  `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-bookworm bench fuzz deb check-deb ci clean help

help:
	@echo "make run            start the bridge in demo mode (simulated terminals, self-signed TLS)"
	@echo "make test           run the test suite in a virtual environment (current PyPI releases)"
	@echo "make test-bookworm  run the test suite on Debian bookworm's own python3-* packages"
	@echo "make bench          run the benchmark and print its figures"
	@echo "make fuzz           fuzz every parser of outside input, FUZZ_INPUTS (1000000) each; prints inputs and crashes"
	@echo "make deb            build the .deb into out/ (on Debian bookworm)"
	@echo "make check-deb      build, lint, install and smoke-test the .deb (needs root)"

$(STAMP): setup.cfg pyproject.toml
	scripts/ensure-system-deps.sh dev
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test,systemd]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/terminal-bridge demo --dir demo

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

test-bookworm:
	scripts/ensure-system-deps.sh bookworm
	PYTHONPATH=$(CURDIR) /usr/bin/python3 -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VPY) bench/bench.py $(BENCH_ARGS)

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
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis
