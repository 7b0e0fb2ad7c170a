# Two commands for a new machine with only python3 and make: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

# Re-installs when the project's metadata changes; the stamp file records a finished install.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	mkdir -p out
	$(VENV)/bin/kvsim compare --figure out/hit_rate_vs_memory.png

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info out
