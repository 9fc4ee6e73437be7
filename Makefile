# cryoclass: two commands from a fresh clone.
#   make demo   - install into .venv, simulate a small dataset, classify it with MPI
#   make test   - install into .venv and run the whole test suite (MPI tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Always the venv's own mpiexec (the mpich wheel): a system mpiexec may be on PATH too
# and cannot launch these ranks.
MPIEXEC := $(VENV)/bin/mpiexec
RANKS ?= 2
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[mpi,test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/cryoclass simulate demo_data --n 2400 --box 64 --pixel-size 3.0 --species 3 \
		--snr 0.1 --junk 0.15 --duplicates 0.05 --seed 1
	$(MPIEXEC) -n $(RANKS) $(VENV)/bin/cryoclass classify demo_data/particles.star \
		--out demo_run --classes 10 --max-res 12 --online-iters 12 --batch-per-class 80 \
		--set classify.anneal_iters=8 --psi-step 6
	@echo
	@echo "Demo finished. Outputs in demo_run/: run.h5, particles.star, particles.cs,"
	@echo "class_averages.mrcs, events.log (truth of the simulated data: demo_data/truth.h5)"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf demo_run demo_data .pytest_cache
