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

.PHONY: install demo test test-fast lint clean bench relion-compare report-screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[mpi,test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	rm -rf demo_data demo_run
	$(VENV)/bin/cryoclass simulate demo_data --n 2400 --box 64 --pixel-size 3.0 --species 3 \
		--views-per-species 2 --snr 0.1 --junk 0.2 --duplicates 0.05 --seed 1
	$(MPIEXEC) -n $(RANKS) $(VENV)/bin/cryoclass classify demo_data/particles.star \
		--out demo_run --classes 12 --max-res 8 --online-iters 15 --batch-per-class 80 \
		--mask-diameter 130 --set classify.anneal_iters=10
	@echo
	@echo "Accuracy against the simulator's truth (demo_data/truth.h5):"
	$(VENV)/bin/cryoclass evaluate demo_data/truth.h5 demo_run/particles.star
	@echo
	@echo "Demo finished. Outputs in demo_run/: report.html (open it in a browser), run.h5,"
	@echo "particles.star, particles.cs, class_averages.mrcs, rejected_duplicates.star/.cs,"
	@echo "events.log and figures/."

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests

bench: install
	$(MPIEXEC) -n $(RANKS) $(VENV)/bin/cryoclass -q bench --n 1000 --classes 50 --max-res 6

relion-compare: install
	bash launch/compare_relion.sh

# headless Chromium (Debian) renders demo_run/report.html to demo_run/report.png
report-screenshot: install
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	@[ -f demo_run/report.html ] || $(MAKE) demo
	chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
		--no-first-run --user-data-dir=$$(mktemp -d) --window-size=1300,2400 \
		--screenshot=$(CURDIR)/demo_run/report.png file://$(CURDIR)/demo_run/report.html
	@echo "screenshot: demo_run/report.png"

clean:
	rm -rf demo_run demo_data .pytest_cache
