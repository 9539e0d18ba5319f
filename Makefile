PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install demo test bench clean tools

$(STAMP): pyproject.toml
	command -v nginx >/dev/null || (apt-get update -q && apt-get install -y -q nginx)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m compileall -q mlcbuild > /dev/null
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mlcbuild build recipes/demo.yaml
	$(BIN)/mlcbuild run recipes/demo.yaml -q q0f32 --raw --temperature 0 --max-tokens 24 --prompt "Twinkle, twinkle, little star,"
	$(BIN)/mlcbuild run recipes/demo.yaml -q q4f16_1 --raw --temperature 0 --max-tokens 24 --prompt "The lighthouse keeper"
	$(BIN)/mlcbuild run recipes/demo.yaml -q q4f16_1 --temperature 0 --prompt "What is mlcbuild?"
	@echo "chat with it: $(BIN)/mlcbuild chat recipes/demo.yaml   serve it: $(BIN)/mlcbuild serve recipes/demo.yaml --port 8000"

# tmux drives `mlcbuild chat` and headless Chromium the chat page in the tests (CI runs as root on a clean machine).
tools:
	command -v tmux > /dev/null || (apt-get update -qq && apt-get install -y -qq tmux)
	command -v chromium > /dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: $(STAMP) tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	command -v b3sum >/dev/null || (apt-get update -qq && apt-get install -y -qq b3sum) || echo "b3sum unavailable: its column is left out"
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DGGML_NATIVE=ON" timeout 1800 $(BIN)/python -m pip install -q -e ".[llama]" || echo "llama-cpp-python did not build: its row in bench/decode.py is left out"
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) cache/objects cache/ac cache/tmp dist
