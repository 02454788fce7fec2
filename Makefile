# Two commands do everything on a fresh machine (Python >= 3.10 with pip):
#   make demo   - install, then the whole pipeline on its embedded defaults
#   make test   - install, then the test suite
# Finished steps are files; re-running `make demo` reuses them.

PYTHON ?= python3
DATA := data/synthetic
WORK := work_dirs/tiny
# Data and schedule of the demo (the small CPU config, see training/config.py:tiny_synthetic)
NUM_TRAIN ?= 1000
NUM_VAL ?= 100
EPOCHS ?=
NPROC ?= 2

.PHONY: setup demo test train evaluate clean-demo

setup: .setup.stamp
.setup.stamp: pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[train,export,dev]"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps "tensorrt-stubs>=10.6"
	@touch $@

$(DATA)/annotations/panoptic_val2017.json: | setup
	$(PYTHON) training/make_synthetic.py --root $(DATA) --num-train $(NUM_TRAIN) --num-val $(NUM_VAL) --overwrite

$(WORK)/final.pt: $(DATA)/annotations/panoptic_val2017.json
	OMP_NUM_THREADS=1 $(PYTHON) -m torch.distributed.run --nproc_per_node $(NPROC) training/train.py \
		--config tiny_synthetic --data-root $(DATA) --work-dir $(WORK) $(if $(EPOCHS),--epochs $(EPOCHS),) --threads 1 \
		$(if $(wildcard $(WORK)/latest.pt),--resume,)
train: $(WORK)/final.pt

$(WORK)/eval/pq.json: $(WORK)/final.pt
	$(PYTHON) training/evaluate.py --ckpt $(WORK)/final.pt --data-root $(DATA) --out $(WORK)/eval
evaluate: $(WORK)/eval/pq.json

demo: setup evaluate
	@echo "demo done: $(WORK)/eval/pq.json"

test: setup
	$(PYTHON) -m pytest -n 2 tests

clean-demo:
	rm -rf $(DATA) $(WORK)
