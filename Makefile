PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYPROJECT := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
# what the demo needs (`pip install -e .`), then what the tests add on top of it
BASE := $(VENV)/.deps-base-$(PYPROJECT)
STAMP := $(VENV)/.deps-test-$(PYPROJECT)
PYTEST_ARGS ?=

.PHONY: install demo test bench clean tools

$(BASE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m compileall -q mlcbuild > /dev/null
	rm -f $(VENV)/.installed-* $(VENV)/.deps-base-*
	touch $@

# the test extra (torch, transformers, ray, moto, ...) and nginx (the HTTP remote-cache tests)
$(STAMP): $(BASE)
	command -v nginx >/dev/null || (apt-get update -q && apt-get install -y -q nginx)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	rm -f $(VENV)/.deps-test-*
	touch $@

install: $(STAMP)

demo: $(BASE)
	$(BIN)/mlcbuild build recipes/demo.yaml
	$(BIN)/mlcbuild run recipes/demo.yaml -q q0f32 --raw --temperature 0 --max-tokens 24 --prompt "Twinkle, twinkle, little star,"
	$(BIN)/mlcbuild run recipes/demo.yaml -q q4f16_1 --raw --temperature 0 --max-tokens 24 --prompt "The lighthouse keeper"
	$(BIN)/mlcbuild run recipes/demo.yaml -q q4f16_1 --temperature 0 --prompt "What is mlcbuild?"
	@echo "chat with it: $(BIN)/mlcbuild chat recipes/demo.yaml   serve it: $(BIN)/mlcbuild serve recipes/demo.yaml --port 8000"

# tmux drives `mlcbuild chat` and headless Chromium the chat page in the tests (CI runs as root on a clean machine);
# the aarch64 cross linker links the llvm:aarch64* libraries the tests cross-compile, and qemu-user runs
# them in an aarch64 Python with TVM's aarch64 runtime (Debian's arm64 python3.11 and the aarch64 wheels
# of the venv's numpy and TVM versions, unpacked into the venv); objdump reads the instructions of the x86
# libraries they build.
AARCH64_ENV := $(VENV)/aarch64
AARCH64_STAMP := $(VENV)/.aarch64-$(PYPROJECT)

tools:
	command -v objdump > /dev/null || (apt-get update -qq && apt-get install -y -qq binutils)
	command -v tmux > /dev/null || (apt-get update -qq && apt-get install -y -qq tmux)
	command -v aarch64-linux-gnu-gcc > /dev/null || (apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu)
	command -v qemu-aarch64 > /dev/null || (apt-get update -qq && apt-get install -y -qq qemu-user)
	command -v chromium > /dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

$(AARCH64_STAMP): $(BASE)
	$(BIN)/python tests/aarch64/make_env.py $(AARCH64_ENV)
	rm -f $(VENV)/.aarch64-*
	touch $@

test: $(STAMP) tools $(AARCH64_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	command -v b3sum >/dev/null || (apt-get update -qq && apt-get install -y -qq b3sum) || echo "b3sum unavailable: its column is left out"
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DGGML_NATIVE=ON" timeout 1800 $(BIN)/python -m pip install -q -e ".[llama]" || echo "llama-cpp-python did not build: its row in bench/decode.py is left out"
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) cache/objects cache/ac cache/tmp dist
