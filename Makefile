# The two commands: `make run` (the embedded default workflow) and `make test` (the test suite).
# Both bootstrap .venv from requirements.lock first when it is missing or stale.
VENV  ?= .venv
CORES ?= 2
# pytest-xdist workers for `make test`; tests/conftest.py groups the tests so each workflow runs once. Three on
# two cores: a worker waiting on SLURM or a server leaves its core to the third (tests/conftest.py).
TEST_WORKERS ?= 3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv run report test lint fmt dry-run clean-results

venv:
	@tools/bootstrap.sh $(VENV)

run: venv
	snakemake --cores $(CORES)   # profiles/default is Snakemake's workflow profile: loaded by itself

# The HTML report of a finished run (dataset card, figures, loss curve, evaluation table): results/report.html
report: run
	snakemake --cores $(CORES) --report results/report.html

test: venv
	python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=12 $(PYTEST_ARGS)

lint: venv
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile rules/
	snakemake --lint --cores 1

fmt: venv
	ruff format .
	snakefmt Snakefile rules/

dry-run: venv
	snakemake --cores $(CORES) -n

clean-results:
	rm -rf results logs benchmarks .snakemake
