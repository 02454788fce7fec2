# Two commands do everything on a fresh machine (Python >= 3.10 with pip):
#   make demo   - install, then the whole pipeline on its embedded defaults
#   make test   - install, then the test suite
# The main job (benchmarks/main_job.py) skips the steps it finished before.

PYTHON ?= python3

.PHONY: setup reference triton test-envs demo test clean-demo

setup: .setup.stamp
.setup.stamp: pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[cpu,train,export,dev]"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps "tensorrt-stubs>=10.6"
	@touch $@

# The reference implementation (mmdetection 3.3.0 on mmcv-lite 2.1.0) in its own folder, .mmref/,
# seen only by the reference process of tests/reference (never by the project's environment).
reference: .mmref/.installed
.mmref/.installed: tests/reference/reference_env.py
	$(PYTHON) tests/reference/reference_env.py

# The tritonserver binary that nvidia-pytriton bundles, in .triton/ (its Python dependencies pin
# numpy < 2, so it is unpacked without them); the serving tests start it (runtime/triton_server.py).
triton: .triton/.installed
.triton/.installed: runtime/triton_server.py
	$(PYTHON) -m pfpn.runtime.triton_server --install

# The isolated environments some tests read, made before the suite starts: panopticapi (the
# COCO reference PQ, numpy < 2) and this checkout's wheel in an empty venv (tests/prepared_envs.py).
test-envs: setup
	$(PYTHON) tests/prepared_envs.py panopticapi wheel

demo: setup
	$(PYTHON) benchmarks/main_job.py
	@echo "report: work_dirs/report/REPORT.md"

# loadgroup: the mmdetection parity tests share one worker (and its reference runs)
test: setup reference triton test-envs
	$(PYTHON) -m pytest -n 2 --dist loadgroup --durations=15 tests

clean-demo:
	rm -rf data/synthetic work_dirs/tiny work_dirs/r50 work_dirs/bench work_dirs/report
