# cnet: `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
MLFLOW_URI ?= sqlite:///mlflow.db

.PHONY: install demo test test-fast bench ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) train.py
	$(PY) -m cnet.report table4 --experiment cnet --out-dir outputs/report

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# decode: median of 5 after a warm-up; adaption at COCO scale: one timed run (deformable-conv
# backward takes minutes per module on a CPU). On a GPU: `.venv/bin/python -m cnet.bench --device cuda`
bench: $(STAMP)
	$(PY) -m cnet.bench --repeats 5 --adaption-repeats 1

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_URI) --port 5000

clean:
	rm -rf $(VENV) outputs multirun mlflow.db mlartifacts
