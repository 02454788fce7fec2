# Two commands do everything on a fresh machine (Python >= 3.10 with pip):
#   make demo   - install, then the whole pipeline on its embedded defaults
#   make test   - install, then the test suite
# The main job (benchmarks/main_job.py) skips the steps it finished before.

PYTHON ?= python3

.PHONY: setup demo test clean-demo

setup: .setup.stamp
.setup.stamp: pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[train,export,dev]"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps "tensorrt-stubs>=10.6"
	@touch $@

demo: setup
	$(PYTHON) benchmarks/main_job.py
	@echo "report: work_dirs/report/REPORT.md"

test: setup
	$(PYTHON) -m pytest -n 2 tests

clean-demo:
	rm -rf data/synthetic work_dirs/tiny work_dirs/r50 work_dirs/bench work_dirs/report
