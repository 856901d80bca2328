# cnet: `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
MLFLOW_URI ?= sqlite:///mlflow.db
# pytest-xdist workers: one per core (each computes on one torch thread); WORKERS=0 runs in one process
WORKERS ?= 2

.PHONY: install demo test test-fast lint coverage mutants bench gpu-check ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# the demo run is Table 5's cross-star row: the table shows it beside the paper's numbers
demo: $(STAMP)
	$(PY) train.py
	$(PY) -m cnet.tools.report table5 --experiment cnet --out-dir outputs/report

# the fast suite, then the slow end-to-end tests, each on WORKERS processes; the tests on the session's
# SLURM cluster and on its PostgreSQL-backed tracking server keep to one worker each (--dist loadgroup),
# so each service starts once
test: lint
	$(PY) -m pytest -q -m "not slow" -n $(WORKERS) --dist loadgroup
	$(PY) -m pytest -q -m slow -n $(WORKERS) --dist loadgroup

# ruff (lint + format check) and mypy over the package, tests and train.py
lint: $(STAMP)
	$(VENV)/bin/ruff check cnet tests train.py
	$(VENV)/bin/ruff format --check cnet tests train.py
	$(VENV)/bin/mypy

# line coverage of cnet/ by the fast suite (in-process code only)
coverage: $(STAMP)
	$(PY) -m coverage run -m pytest -q -m "not slow" -p no:cacheprovider
	$(PY) -m coverage report --sort=cover

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(WORKERS) --dist loadgroup

# plants each curated mutation (tests/mutation/mutants.py) in a temporary copy and runs the fast
# suite against it; fails if any survives. 8-13 minutes on 2 shared CPU cores; not part of `make test`.
mutants: $(STAMP)
	$(PY) tests/mutation/run.py

# decode: median of 5 after a warm-up; adaption at COCO scale: one timed run (deformable-conv
# backward takes minutes per module on a CPU); training images/s with 1 and 2 CPU processes; data
# pipeline images/s at crop 511 on coco_tiny, one process one thread (--root for another COCO folder);
# bootstrap: 1000 resamples of a COCO-sized synthetic results file vs COCOeval per resample (minutes).
# On a GPU: `.venv/bin/python -m cnet.tools.bench --device cuda` and `-m cnet.tools.bench_train --device cuda`
# (reports/bench_cuda.* and reports/bench_train_cuda.*), or all of `gpu-check` below.
bench: $(STAMP)
	$(PY) -m cnet.tools.bench --repeats 5 --adaption-repeats 1
	$(PY) -m cnet.tools.bench_train --device cpu
	$(PY) -m cnet.tools.bench_data

# on the first GPU machine, on every GPU it has: the CUDA benchmarks above, a 50-step HG-104 trainer=gpu
# training in bf16 through DDP and the mask head under DDP -> one report, outputs/gpu_check/report.md
# (send it). `make gpu-check ARGS=--tiny`: the same steps on 2 CPU processes, tiny backbone (about a minute).
gpu-check: $(STAMP)
	$(PY) -m cnet.tools.gpu_check $(ARGS)

# the MLflow UI; it first prints, per experiment, the link to its runs table with the ablation columns
ui: $(STAMP)
	$(PY) -m cnet.tools.ui --backend-store-uri $(MLFLOW_URI) --port 5000

clean:
	rm -rf $(VENV) outputs multirun mlflow.db mlartifacts
