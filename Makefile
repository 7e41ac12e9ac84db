PY ?= .venv/bin/python
# The demo serves the shapes model the project trained (committed; `make train-shapes` remakes it).
DEMO_MODELS ?= assets/shapes-models
DEMO_PROMPT ?= a large red circle in the centre on a white background
# The shapes model oversaturates at the usual 7.5 (docs/training.md: guidance 3 draws the
# held-out captions' colours best).
DEMO_GUIDANCE ?= 3

.PHONY: setup redis demo test soak chaos protos lint bench bench-editing bench-gpu bench-serving chart-check down \
	train-shapes eval-shapes bench-shapes

setup: .venv/.installed

.venv/.installed: pyproject.toml requirements.lock
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; \
	  else echo "install redis-server (Debian: sudo apt-get install redis-server)"; exit 1; fi; }

demo: setup redis
	$(PY) -m dfleet up --models-dir $(DEMO_MODELS) --detach
	$(PY) -m dfleet generate "$(DEMO_PROMPT)" -o out.png --seed 1 --guidance-scale $(DEMO_GUIDANCE); rc=$$?; \
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
	$(PY) -m ruff check services controller dfleet loadgen tests bench training
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

# The shapes model: train every stage (resumes from build/shapes-train), evaluate, benchmark.
train-shapes: setup
	nice -n 10 $(PY) -m training train --seed 0 --threads 2 --out $(DEMO_MODELS)

eval-shapes: setup
	$(PY) -m training evaluate --models $(DEMO_MODELS)

bench-shapes: setup
	$(PY) bench/slim_tiers.py --models $(DEMO_MODELS)
	$(PY) bench/approximation_quality.py --trained $(DEMO_MODELS) --prompts 20
	$(PY) bench/masked_editing.py --trained $(DEMO_MODELS)
