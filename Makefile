# Two commands do all the set-up (see README):  make report   and   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zfcore-installed
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

REPORT_SCRATCH ?= .report-test

NUMPY_VENV ?= .venv-numpy

.PHONY: env report test test-core test-fast test-code test-notebooks bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

env: $(STAMP)

# Main job: execute the numbered notebooks on the embedded default and render the report
# (report/build/: index.html, one page per chapter, report.html, report.pdf; all offline).
report: $(STAMP)
	$(PY) report/build.py

# All tests: the package's tests (and the builder's unit tests) and every notebook under nbval (cells must
# run cleanly), on TEST_JOBS pytest-xdist workers, each on its own core (a notebook's cells stay on one
# worker, the largest notebooks first; the chapters that quote other chapters' findings run after them);
# then a report built into a scratch folder from the notebooks nbval executed (each notebook runs once;
# chapter 5 writes the feature atlas from its own scan) and checked (HTML offline, in Chromium when
# installed, and the PDF).
TEST_JOBS ?= 2
KEPT := $(REPORT_SCRATCH)-executed
NB_QUOTING := $(shell grep -l 'findings\.load\b' notebooks/[0-9]*.ipynb)
NB_OTHERS := $(filter-out $(NB_QUOTING),$(shell ls -S notebooks/[0-9]*.ipynb))
NBVAL := --nbval-lax -p no:cacheprovider -p report.keep_executed --keep-executed $(KEPT)

test: $(STAMP) test-core
	rm -rf $(KEPT)
	ZFCORE_ATLAS_OUT=$(abspath $(KEPT))/atlas $(PY) -m pytest -n $(TEST_JOBS) --dist loadfile $(NBVAL) \
		$(NB_OTHERS) tests
	$(PY) -m pytest $(NBVAL) $(NB_QUOTING)
	$(PY) report/build.py --out $(REPORT_SCRATCH) --from-executed $(KEPT)
	ZFCORE_REPORT_DIR=$(REPORT_SCRATCH) $(PY) -m pytest -p no:cacheprovider tests/report/test_built_report.py

# The core on an install of the wheel with numpy alone (no torch, no matplotlib): the tests of the ops,
# the network, the projection, the records and the errors, run against the installed package.
test-core:
	$(PYTHON) -m venv $(NUMPY_VENV)
	$(NUMPY_VENV)/bin/python -m pip install --quiet . pytest hypothesis
	cd tests && ../$(NUMPY_VENV)/bin/python -m pytest -p no:cacheprovider -q -m "not slow" \
		test_ops.py test_network.py test_projection.py test_record.py test_errors.py

# Development: the package's tests without those marked slow (the 1,000-example property runs against
# torch, the VGG16-sized cases); a few minutes instead of the full run.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(NUMPY_VENV) report/build $(REPORT_SCRATCH) $(REPORT_SCRATCH)-executed
