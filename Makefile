# fair_lightning: every target creates the virtualenv first (idempotent).
PY       ?= python3.11
VENV     ?= .venv
BIN      := $(VENV)/bin
EXP      ?= adversarial
ARGS     ?=
CKPT     ?=
RUNS     ?=
PYTEST   := $(BIN)/python -m pytest

SEEDS    ?= 0 1 2
EXPS     ?= baseline face_discriminator adversarial label_adversary
# torch threads per seed run: the thread count changes float summation order and so the
# trajectory; one thread gives the same numbers on any machine. Each table of the docs
# states the count its runs used (the README's: SEED_THREADS=2, torch's default here)
SEED_THREADS ?= 1

.PHONY: install train predict preprocess bench sweep pareto sync audit compare results seeds realface realface-setup test test-integration test-all lint clean help

help:
	@echo "make train EXP=<experiment> ARGS='key=value ...'   train, test, probe, report"
	@echo "make preprocess ARGS='data.source=chalearn data.chalearn.root=DIR'  raw clips -> cached shards"
	@echo "make bench [BENCH=train|preprocess|predict] [ARGS=...]  benchmarks -> runs/bench/{bench,preprocess,predict}.json"
	@echo "make sweep SWEEP=<yaml> [COUNT=n] [ARGS='k=v ...']   W&B sweep (offline without a login)"
	@echo "make pareto SWEEP_DIR=runs/sweeps/<name>            a sweep's front and its selected trial"
	@echo "make sync RUN=runs/<run dir>                         upload its offline W&B runs (each run once, however often resumed)"
	@echo "make realface [POP=lfw|fairface|synthetic] [RUNS='baseline adversarial ...'] [SEEDS='0 1 2'] [PHOTOS=dir] [REALFACE_OUT=runs/realface-POP] [ARGS=...]  real-face development benchmark"
	@echo "make test | make test-integration | make test-all     unit tests and a smoke run | end-to-end tests | everything, slow ones too"
	@echo "make audit CKPT=<ckpt> ARGS='...'                  re-run the leakage audit"
	@echo "make predict CKPT=<ckpt> [DATA=clips.csv|dir] [SPLIT=test] [OUT=scores.csv]  score clips: scores and invite decisions"
	@echo "make compare RUNS='dir1 dir2 ...' [OUT=dir]        tables by group and by run + plot"
	@echo "make results                                        the docs' generated tables, from the runs' figures"
	@echo "make seeds [SEEDS='0 1 2'] [EXPS='...'] [SEED_JOBS=2] [ARGS=...]  every experiment x seed (one thread each), then compare"
	@echo "make lint | make clean"

# the stamp depends on pyproject.toml, so a changed dependency list reinstalls
$(VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,faces,sweeps]'
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/python -m fair_lightning.cli.train experiment=$(EXP) $(ARGS)

preprocess: install
	$(BIN)/python -m fair_lightning.cli.preprocess $(ARGS)

# benchmarks that write JSON under runs/bench: train (ratios, memory, growth) or preprocess
BENCH ?= train
bench: install
	$(BIN)/python -m fair_lightning.cli.bench $(BENCH) $(ARGS)

# a W&B sweep file: on the server with a login, else offline through W&B's engine
SWEEP ?=
COUNT ?=
sweep: install
	@test -n "$(SWEEP)" || { echo "usage: make sweep SWEEP=experiments/sweeps/<file>.yaml [COUNT=n] [ARGS='k=v ...']"; exit 2; }
	$(BIN)/python -m fair_lightning.cli.sweep $(SWEEP) $(if $(COUNT),--count $(COUNT)) $(if $(ARGS),--args "$(ARGS)")

sync: install
	@test -n "$(RUN)" || { echo "usage: make sync RUN=runs/<run dir> [ARGS=--dry-run]"; exit 2; }
	$(BIN)/python -m fair_lightning.cli.sync $(RUN) $(ARGS)

pareto: install
	@test -n "$(SWEEP_DIR)" || { echo "usage: make pareto SWEEP_DIR=runs/sweeps/<name>"; exit 2; }
	$(BIN)/python -m fair_lightning.cli.report --sweep $(SWEEP_DIR)

audit: install
	@test -n "$(CKPT)" || { echo "usage: make audit CKPT=path/to/checkpoint.ckpt [ARGS='...']"; exit 2; }
	$(BIN)/python -m fair_lightning.cli.audit ckpt=$(CKPT) $(ARGS)

# score clips with a checkpoint: DATA a manifest CSV or a ChaLearn folder (none: the run's own
# data), SPLIT test|val|train|all, OUT the scores CSV (a JSON sidecar beside it)
predict: install
	@test -n "$(CKPT)" || { echo "usage: make predict CKPT=path/to/checkpoint.ckpt [DATA=clips.csv|dir] [SPLIT=test] [OUT=scores.csv] [ARGS='...']"; exit 2; }
	$(BIN)/python -m fair_lightning.cli.predict ckpt=$(CKPT) $(if $(DATA),data=$(DATA)) \
	  $(if $(SPLIT),split=$(SPLIT)) $(if $(OUT),out=$(OUT)) $(ARGS)

compare: install
	@test -n "$(RUNS)" || { echo "usage: make compare RUNS='run_dir1 run_dir2 ...' [OUT=dir]"; exit 2; }
	$(BIN)/python -m fair_lightning.cli.report $(RUNS) --out $(or $(OUT),runs/comparison)

# the docs' generated tables: figures of the runs that exist -> docs/results/*.json (committed)
# -> the tables in the docs (benchmarks/doc_tables.py; `make test` checks they agree)
results: install
	$(BIN)/python -m benchmarks.doc_tables

# every experiment on every seed, on the same data, then one comparison (mean, std, worst);
# SEED_JOBS runs go at once (each on SEED_THREADS threads: 2 x 1 fills 2 cores)
SEED_JOBS ?= 1
seeds: install
	@set -e; mkdir -p runs/seeds; for e in $(EXPS); do for s in $(SEEDS); do echo "$$e $$s"; done; done | \
	  xargs -P $(SEED_JOBS) -L 1 sh -c 'OMP_NUM_THREADS=$(SEED_THREADS) $(BIN)/python -m \
	    fair_lightning.cli.train experiment=$$0 seed=$$1 output_dir=runs/seeds/$$0-s$$1 $(ARGS) \
	    > runs/seeds/$$0-s$$1.log 2>&1 || { echo "failed: $$0 seed $$1 (runs/seeds/$$0-s$$1.log)"; exit 255; }'
	$(BIN)/python -m fair_lightning.cli.report $(foreach e,$(EXPS),$(foreach s,$(SEEDS),runs/seeds/$(e)-s$(s))) \
	  --out runs/seeds/comparison

# real-face development benchmark: a ChaLearn-layout corpus from real photographs (never part of
# this repository), then `make train` on it per run and seed -> runs/realface-<POP>/{results.json,
# table.md}. POP: lfw (../shared/data/lfw-dev) or fairface (../shared/data/fairface-dev);
# PHOTOS overrides the folder; synthetic: the same runs on the embedded synthetic data
POP ?= lfw
PHOTOS ?=
REALFACE_OUT ?= runs/realface-$(POP)
realface-setup:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq espeak-ng; \
	  else echo "error: the benchmark's voices need espeak-ng: sudo apt-get install espeak-ng"; exit 2; fi; }

realface: install realface-setup
	$(BIN)/python -m benchmarks.realface.run --population $(POP) $(if $(RUNS),--runs $(RUNS)) \
	  --seeds $(SEEDS) $(if $(PHOTOS),--photos $(PHOTOS)) --out $(REALFACE_OUT) \
	  $(if $(ARGS),--args "$(ARGS)")

test: install
	$(PYTEST) -q tests/unit tests/smoke

test-integration: install realface-setup
	$(PYTEST) -q tests/integration

test-all: install realface-setup
	$(PYTEST) -q -m "" tests

lint: install
	$(BIN)/ruff check fair_lightning data_modules tests benchmarks

clean:
	rm -rf runs .cache .pytest_cache .ruff_cache lightning_logs wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
