# Two commands do all set-up on a fresh machine:
#   make demo   -- create/reuse .venv, install, train the default model on the embedded digits
#   make test   -- create/reuse .venv, install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,onednn,pretrained,export]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m train.main --config=train/configs/digits_cnn.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
