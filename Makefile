# `make demo` and `make test` create .venv and install into it when missing.
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell (cat pyproject.toml; echo) | md5sum | cut -c1-8)

.PHONY: demo test test-slow base study clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f .venv/.installed-* && touch $@

demo: $(STAMP)
	$(PY) -m tteflash.cli demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)  # exit status 5 = no slow test collected yet
	$(PY) -m pytest -q -m slow || test $$? -eq 5

base: $(STAMP)
	$(PY) -m tteflash.cli base

study: $(STAMP)  # hours on 2 cores: see configs/study.yaml and docs/results.md
	$(PY) -m tteflash.cli study --config configs/study.yaml

clean:
	rm -rf runs/demo
