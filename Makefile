# CNN recipes for Keras 3 / TensorFlow. `make NAME ARGS="--epochs 5"` runs one recipe.
PY := .venv/bin/python
RECIPES := feature_extraction backprop transfer_learning embeddings augmentation imbalance detection segmentation instance_segmentation distillation qat distributed ocr_crnn tracking frameworks
ARGS ?=

.PHONY: install test lint notebooks bench bench-yolo-env clean pretrain frameworks-deps $(RECIPES)

install: .venv/.installed

# The pinned runtime stack, the development tools, and this project itself (editable), so
# that `python -m recipes.NAME` works from any folder inside the venv.
.venv/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
	.venv/bin/pip install -q --no-deps -e .
	touch $@

# JAX, the PyTorch CPU build and onnxruntime for recipes/frameworks, into the same .venv (Keras 3
# picks its backend per process with KERAS_BACKEND), never in requirements.txt.
frameworks-deps: .venv/.frameworks-installed

.venv/.frameworks-installed: requirements-frameworks.txt .venv/.installed
	.venv/bin/pip install -q -r requirements.txt -r requirements-frameworks.txt
	touch $@

# Unit tests, one smoke run per recipe, notebook sync and notebook execution (smoke mode).
test: install frameworks-deps
	$(PY) -m pytest -n 2 --durations=15 tests

lint: install
	.venv/bin/ruff check common recipes tests bench

# Regenerate notebooks/NAME.ipynb from recipes/NAME/NAME.py (never edit the notebooks);
# --update keeps the cell ids of unchanged cells, so the diff shows only what changed.
notebooks: install
	@for r in $(RECIPES) pretrain; do \
	  if [ -f recipes/$$r/$$r.py ]; then \
	    .venv/bin/jupytext --quiet --to ipynb --update --update-metadata '{"jupytext":null,"kernelspec":{"name":"python3","display_name":"Python 3","language":"python"}}' \
	      -o notebooks/$$r.ipynb recipes/$$r/$$r.py || exit 1; \
	  fi; \
	done

# Benchmarks (not tests): speed and quality side by side, written to bench/out/.
bench: install
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Ultralytics + torch for the YOLOv8n baseline of bench/bench_detection.py: a venv of its own,
# never in requirements.txt (PyPI's torch wheels bring the CUDA runtime: ~6 GB, CPU or not).
bench-yolo-env: bench/.venv-yolo/.installed

bench/.venv-yolo/.installed: bench/requirements-ultralytics.txt
	python3 -m venv bench/.venv-yolo
	bench/.venv-yolo/bin/pip install -q --upgrade pip
	bench/.venv-yolo/bin/pip install -q -r bench/requirements-ultralytics.txt
	touch $@

$(RECIPES): install
	$(PY) -m recipes.$@ $(ARGS)

frameworks: frameworks-deps

# Rebuild the generic backbone that ships in common/weights/ (see recipes/pretrain/README.md).
pretrain: install
	$(PY) -m recipes.pretrain --ship $(ARGS)

clean:
	rm -rf runs bench/out .pytest_cache
