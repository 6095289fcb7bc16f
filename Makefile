# Everything runs from a local virtual environment, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint run bench clean results results-full studies report

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray,tensorboard,mlflow,notebook]'
	touch $@

lint: install
	$(BIN)/ruff check bnbench tests
	$(BIN)/ruff format --check bnbench tests

# Two test processes: most tests wait on a bnbench process of one thread, so two keep both cores busy
# (28 min in one process, about half in two, on the 2-core CI machine).
TEST_WORKERS ?= 2
test: install lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25

run: install
	$(BIN)/bnbench run configs/lenet_bn.yaml

bench: install
	$(BIN)/bnbench bench --device cpu --rounds 5 --out bench.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The evidence (docs/results): every study in configs/studies/ that declares claims (the why-studies last),
# then the report generated from the runs.
# Each study runs until its claims are decided or at its seed budget (`sequential:` in the study, docs/sweep.md).
# Resumable: a second `make results` skips every run already done. Needs the real datasets.
STUDIES := mlp_norms mlp_lr convnet_norms lenet_norms ioffe_mnist accumulation eval_statistics lr_sensitivity \
	ghost_large_batch scale_invariance depth_gradients noisy_bn eval_batches affine_only \
	bn_regularization landscape skip_connections init_scale best_lr mlp_norms_momentum
# `make results-full` adds these, which would take `make results` past 2 hours on 2 cores (about 136 min on the
# 2-core machine of the first report, 113 without them): batch_size (23 min there: its batch-2 and batch-4 runs
# take 30,000 and 15,000 steps an epoch; its claims are about BN's alternatives at small batches) and the momentum
# replicates of the two expensive studies (LeNet, 34 s a run; the learning-rate grid, 140 runs).
STUDIES_FULL := $(STUDIES) batch_size lenet_norms_momentum lr_sensitivity_momentum
RESULTS_RUNS ?= runs
# The real datasets for the evidence, passed explicitly; every other target (`make run`) uses the CLI's
# default: $BNBENCH_DATA_DIR if set, else ./data (git-ignored; downloaded on first use).
RESULTS_DATA_DIR ?= ../shared/data

results: studies report

results-full:
	$(MAKE) results STUDIES="$(STUDIES_FULL)"

studies: install
	@for s in $(STUDIES); do \
		$(BIN)/bnbench sweep configs/studies/$$s.yaml --until-decided --jobs auto --out-dir $(RESULTS_RUNS) \
			--data-dir $(RESULTS_DATA_DIR); code=$$?; \
		if [ $$code -ge 2 ]; then exit $$code; fi; \
	done

# The report covers every study of STUDIES_FULL that has been run (a `make results-full` study once run stays in it).
REPORTED = $(foreach s,$(STUDIES_FULL),$(if $(wildcard $(RESULTS_RUNS)/$(s)/study.yaml),$(s)))

report: install
	$(BIN)/bnbench report $(addprefix $(RESULTS_RUNS)/,$(REPORTED)) --out docs/results
	$(BIN)/python scripts/readme_results.py docs/results/README.md README.md
