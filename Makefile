# The two promises of the README: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Offline first: nothing in the default reaches a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-fast lint cluster-test dry-run-paper slurm-profile clean

# torch first and pinned, by pip: 2.13.0 is the CPU build on this disk (pip's find-links; uv does not look there),
# and a loose range would pull a CUDA build. Everything else at the exact versions of constraints.txt, so a fresh
# machine gets what the figures used, installed by uv (itself pinned there): the whole venv takes about 50 s on a
# fresh machine where pip took about 3 minutes. --compile-bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is
# set (as in this machine's shell) nothing else writes the .pyc files, every process compiles its imports again, and
# `make test` took 5:54 instead of 4:03.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -c constraints.txt uv
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(VENV)/bin/python -c constraints.txt -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## The main job on the embedded default (config.yaml): raw text -> tables and plots in results/demo/.
demo: venv
	snakemake --profile profiles/local

## The test suite, including the end-to-end Snakemake runs of every config's offline twin (configs/twins/), on two
## workers: the DAG tests share one workspace on one worker, the unit tests run on the other.
test: venv
	python -m pytest tests -q -n 2 --dist loadgroup

## Unit tests only (no end-to-end DAG run).
test-fast: venv
	python -m pytest tests -q -n 2 -m "not slow"

## Lint and format checks: ruff (pyflakes, pycodestyle, imports, bugbear, pyupgrade; pyproject.toml), snakefmt, and
## Snakemake's own lint (`snakemake --lint`, exit 1 on any finding) of the workflow as the default config, and as
## each config of configs/ with its offline twin (configs/twins/), the way the tests and the README run them.
# The lints of the configs run two at a time (about 3.4 s each, most of it starting Snakemake).
lint: venv
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile rules/
	for c in config.yaml configs/*.yaml; do \
	    t=configs/twins/$$(basename $$c); \
	    echo $$c $$([ -f $$t ] && echo $$t); \
	done | xargs -P 2 -L 1 sh -c 'out=$$(snakemake --lint --configfile "$$@" 2>&1) || \
	    { echo "$$out"; echo "snakemake --lint --configfile $$*: failed"; exit 1; }' lint

## The live-SLURM test: installs and starts a single-node SLURM here, runs the tiny DAG through sbatch.
# The script prints PASS, FAIL or SKIP (exit 77: this host cannot run SLURM daemons, and says why).
cluster-test: venv
	bash tests/cluster/test_slurm_e2e.sh

## Plan the paper reproduction without running it.
dry-run-paper: venv
	snakemake -n --profile profiles/slurm --configfile configs/paper.yaml --quiet rules

## Link profiles/slurm into ~/.config/snakemake/slurm, so that `snakemake --profile slurm` works from anywhere.
slurm-profile:
	@mkdir -p $(HOME)/.config/snakemake
	@if [ -e $(HOME)/.config/snakemake/slurm ] && [ ! -L $(HOME)/.config/snakemake/slurm ]; then \
	    echo "$(HOME)/.config/snakemake/slurm exists and is not a link: move it away first" >&2; exit 1; fi
	ln -sfn $(CURDIR)/profiles/slurm $(HOME)/.config/snakemake/slurm

clean:
	rm -rf data runs results logs benchmarks .snakemake
