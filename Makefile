PY ?= .venv/bin/python
MODELS ?= models

.PHONY: setup redis demo test soak chaos protos lint bench bench-editing bench-gpu bench-serving chart-check down

setup: .venv/.installed

.venv/.installed: pyproject.toml requirements.lock
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

$(MODELS)/tree.json: | setup
	$(PY) -m dfleet tiny-model $(MODELS)

redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; \
	  else echo "install redis-server (Debian: sudo apt-get install redis-server)"; exit 1; fi; }

demo: setup redis $(MODELS)/tree.json
	$(PY) -m dfleet up --models-dir $(MODELS) --detach
	$(PY) -m dfleet generate "a tiny red fox" -o out.png --seed 1; rc=$$?; \
	  $(PY) -m dfleet down; exit $$rc

down:
	$(PY) -m dfleet down

test: setup redis
	$(PY) -m pytest -q -p no:cacheprovider --durations=20

soak: setup redis
	$(PY) bench/soak.py --minutes $(or $(SOAK_MINUTES),30)

chaos: setup redis
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests/test_chaos.py

protos: setup
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/diffusion/v1/*.proto

lint: setup
	$(PY) -m ruff check services controller dfleet loadgen tests bench
	$(PY) -m mypy services/common controller dfleet

bench: setup
	$(PY) bench/fleet_overhead.py
	$(PY) bench/controlnet_parallel.py
	$(PY) bench/bal.py
	$(PY) bench/caches.py
	$(PY) bench/approximation_quality.py
	$(PY) bench/sdxl_shaped_ratios.py

bench-editing: setup
	$(PY) bench/masked_editing.py
	$(PY) bench/edit_placement.py

bench-gpu: setup
	$(PY) bench/gpu_workflow.py

bench-serving: setup
	$(PY) bench/serving.py

chart-check: setup
	PYTHON=$(if $(findstring /,$(PY)),$(abspath $(PY)),$(PY)) bash charts/check.sh
