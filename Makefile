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

.PHONY: install demo test test-fast lint clean bench bench-memory relion-compare \
	report-screenshot test-mpi-hdf5 interop-tools device-wheels device-check-dry \
	bench-accuracy

# The system-MPI stack (what cluster users run): Debian's Open MPI, mpi4py and an
# MPI-enabled h5py (parallel HDF5) under the system Python, with cryoclass's other
# dependencies pip-installed on top while pip keeps Debian's numpy/h5py/mpi4py.
MPI_VENV ?= .venv-mpi
MPI_STAMP := $(MPI_VENV)/.installed-stamp
SYSTEM_MPIRUN := mpirun --allow-run-as-root --oversubscribe

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[mpi,test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	rm -rf demo_data demo_run
	$(VENV)/bin/cryoclass simulate demo_data --preset hard --n 2400 --snr 0.08 --seed 1
	$(MPIEXEC) -n $(RANKS) $(VENV)/bin/cryoclass classify demo_data/particles.star \
		--out demo_run --classes 10 --particle-diameter 170 --online-iters 15 --batch-per-class 80
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

$(MPI_STAMP): pyproject.toml
	@dpkg -s python3-h5py-mpi >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-h5py-mpi \
		python3-mpi4py python3-numpy python3-venv openmpi-bin)
	/usr/bin/python3 -m venv --system-site-packages $(MPI_VENV)
	H5PY_ALWAYS_USE_MPI=1 /usr/bin/python3 -c "import numpy, h5py, mpi4py; \
		print(f'numpy=={numpy.__version__}\nh5py=={h5py.__version__}\nmpi4py=={mpi4py.__version__}')" \
		> $(MPI_VENV)/constraints.txt
	# Debian names its h5py distribution h5py._debian_h5py_mpi, so pip cannot see it: install
	# every other dependency from pyproject.toml, then cryoclass itself without deps.
	/usr/bin/python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['test'] \
		if not d.startswith(('h5py', 'tomli'))))" > $(MPI_VENV)/requirements.txt
	$(MPI_VENV)/bin/pip install -q -c $(MPI_VENV)/constraints.txt -r $(MPI_VENV)/requirements.txt
	$(MPI_VENV)/bin/pip install -q --no-deps -e .
	touch $(MPI_STAMP)

test-mpi-hdf5: $(MPI_STAMP)
	H5PY_ALWAYS_USE_MPI=1 CRYOCLASS_TEST_MPIEXEC="$(SYSTEM_MPIRUN)" $(MPI_VENV)/bin/python -c \
		"import h5py; assert h5py.get_config().mpi, 'h5py without MPI'"
	H5PY_ALWAYS_USE_MPI=1 CRYOCLASS_TEST_MPIEXEC="$(SYSTEM_MPIRUN)" $(MPI_VENV)/bin/python \
		-m pytest -q tests/test_parallel_hdf5.py tests/test_mpi.py tests/test_collective_io.py

# the real RELION and cryoSPARC tools used by tests/test_interop.py (skipped without them)
interop-tools: install
	@command -v relion_refine >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq relion)
	$(VENV)/bin/pip install -q cryosparc-tools

bench: install
	$(MPIEXEC) -n $(RANKS) $(VENV)/bin/cryoclass -q bench --n 1000 --classes 50 --max-res 6

# peak RSS per rank against N (10k-500k simulated particles; about an hour on 2 cores)
bench-memory: install
	bash launch/memory_bench.sh memory_bench

relion-compare: install
	bash launch/compare_relion.sh

# the hard accuracy benchmark (docs/accuracy.md): cryoclass and RELION 3.1 side by side on
# continuous views at low SNR with junk; SNR= N= K= RELION=0/1 EXTRA="..." OUT= CACHE=
bench-accuracy: install
	bash launch/bench_accuracy.sh

# headless Chromium (Debian) renders demo_run/report.html to demo_run/report.png
report-screenshot: install
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	@[ -f demo_run/report.html ] || $(MAKE) demo
	chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
		--no-first-run --user-data-dir=$$(mktemp -d) --window-size=1300,2400 \
		--screenshot=$(CURDIR)/demo_run/report.png file://$(CURDIR)/demo_run/report.html
	@echo "screenshot: demo_run/report.png"

# wheels the lent GPU machine lacks (it has no package registry), for launch/device_check.sh
device-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl mrcfile mpich

# the device check's plumbing on this CPU machine (NumPy, tiny sizes)
device-check-dry: install
	BACKEND=numpy OUT=device_check_out bash launch/device_check.sh

clean:
	rm -rf demo_run demo_data .pytest_cache
