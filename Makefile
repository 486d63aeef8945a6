# `make demo` and `make test` create .venv and install into it when missing (the demo needs no test extras).
PY := .venv/bin/python
HASH := $(shell (cat pyproject.toml; echo) | md5sum | cut -c1-8)
CORE := .venv/.core-$(HASH)
DEV := .venv/.dev-$(HASH)
# --no-compile: byte-compiling all of torch and transformers took about 80 s of the 2 minutes of set-up
PIP := $(PY) -m pip install -q --disable-pip-version-check --no-compile

.PHONY: demo test test-slow base study study-quick clean

$(CORE): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) -e .
	rm -f .venv/.core-* && touch $@

$(DEV): $(CORE)  # test extras: pytest, MMEB readers (datasets, pyarrow), study plots (matplotlib)
	$(PIP) -e '.[test]'
	rm -f .venv/.dev-* && touch $@

demo: $(CORE)
	$(PY) -m tteflash.cli demo

test: $(DEV)
	$(PY) -m pytest -q

test-slow: $(DEV)  # exit status 5 = no slow test collected yet
	$(PY) -m pytest -q -m slow || test $$? -eq 5

base: $(CORE)
	$(PY) -m tteflash.cli base

study: $(DEV)  # about 105 minutes on 2 cores (36 runs; 95 measured for the earlier 32): see configs/study.yaml
	$(PY) -m tteflash.cli study --config configs/study.yaml

study-quick: $(DEV)  # one seed of 8 configurations, shorter runs: see `quick` in configs/study.yaml
	$(PY) -m tteflash.cli study --config configs/study.yaml --quick

clean:
	rm -rf runs/demo
