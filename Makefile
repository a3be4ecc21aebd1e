# normbook: every target creates or reuses the virtual environment it needs.
#   make book        build the website into _build/html (executes chapters at SCALE="ci")
#   make test        unit tests, nbval, papermill with another seed, website build + Chromium check
#   make test-fast   the unit tests alone (no notebooks, no website): a few minutes
#   make reproduce   papermill at SCALE=full into results/ (for a GPU machine)
#   make spread CHAPTER=04_rms_norm SEEDS=5 [CPU=avx2]
#                    one chapter at SCALE=ci over SEEDS seeds (the spread a chapter states);
#                    CPU=avx2 on the AVX2 code paths (another order of float operations)
#   make distributed CHAPTER=02_batch_norm NPROC=4
#                    one chapter under torchrun on NPROC processes (GPUs with NCCL, else CPU with gloo)
#   make bench       kernel benchmark into benchmarks/results/ (GPU; tiny shapes on a CPU)
#   make bench-cpu   normlib.functional, its reference layer and torch on the CPU, side by side
#   make compile-check  every kernel configuration compiled for sm_80 and sm_90 (no GPU needed):
#                    registers, spills, load width into benchmarks/results/compile/
#   make format      format the chapters' code (black, lines <= 88; a test checks it)
#   make lab         open the notebooks in JupyterLab
#   make clean       remove build outputs (keeps .venv)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.normbook-installed
SCALE  ?= full
SEED   ?= 0
SEEDS  ?= 5
NPROC  ?= 2

# Both parts run in two pytest-xdist workers with one torch thread each. The unit tests are many
# small Python-bound tests. For the book, `--dist loadscope` keeps each notebook (nbval runs it
# cell by cell in one kernel) and tests/test_book.py (papermill at another seed, then the website
# built from those runs) on one worker each, and test_book.py is collected first, so one worker
# runs the chapters at SEED 1 and builds the site while the other runs them at SEED 0. Every
# chapter is checked at both seeds on one thread, as CI runs it: a chapter's numbers depend on the
# thread count (the order of float reductions).
WORKERS ?= 2
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: book test test-fast reproduce spread distributed lab bench bench-cpu compile-check clean browser format

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned here: a CPU build on CPU machines, the CUDA build on GPU machines.
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[book,test]"
	touch $@

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going
	@echo "website: _build/html/index.html"

# Debian's Chromium for the website check (never a browser downloaded by Playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: test-fast browser
	$(ONE_THREAD) $(PY) -m pytest -n $(WORKERS) --dist loadscope tests/test_book.py --nbval-lax chapters

test-fast: $(STAMP)
	$(ONE_THREAD) $(PY) -m pytest -n $(WORKERS) -m "not book" tests

reproduce: $(STAMP)
	mkdir -p results
	for nb in chapters/[0-9]*.ipynb; do \
	  $(VENV)/bin/papermill "$$nb" "results/$$(basename $$nb)" -p SCALE $(SCALE) -p SEED $(SEED) || exit 1; \
	done

# One torch thread, as make test runs the chapters. CPU=avx2 runs PyTorch's and MKL's AVX2 code
# paths instead of the widest the CPU has (AVX-512 on some machines): another order of float
# operations, as on another machine, which is enough to send a chaotic run (a GAN) elsewhere.
CPU_PATH := $(if $(filter avx2,$(CPU)),ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2)
spread: $(STAMP)
	test -n "$(CHAPTER)" || { echo "usage: make spread CHAPTER=04_rms_norm SEEDS=5 [CPU=avx2]"; exit 2; }
	mkdir -p results
	$(ONE_THREAD) $(CPU_PATH) $(VENV)/bin/papermill chapters/$(CHAPTER).ipynb \
	  results/$(CHAPTER)-$(SEEDS)seeds$(if $(CPU),-$(CPU)).ipynb \
	  -p SCALE ci -p SEED $(SEED) -p SEEDS $(SEEDS) --cwd chapters

# Each process runs the notebook in its own kernel, which inherits torchrun's environment, so
# normlib.book.train.fit joins the process group; only rank 0 keeps its executed notebook.
distributed: $(STAMP)
	test -n "$(CHAPTER)" || { echo "usage: make distributed CHAPTER=02_batch_norm NPROC=2 [SCALE=full]"; exit 2; }
	mkdir -p results
	$(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) --local-ranks-filter 0 --no-python bash -c \
	  'out=/dev/null; [ "$$RANK" = 0 ] && out=results/$(CHAPTER)-$(NPROC)proc.ipynb; \
	   exec $(VENV)/bin/papermill chapters/$(CHAPTER).ipynb $$out -p SCALE $(SCALE) -p SEED $(SEED) --log-output'

bench: $(STAMP)
	$(PY) -m normlib.book.bench --out benchmarks/results

bench-cpu: $(STAMP)
	$(PY) -m normlib.book.bench --cpu --out benchmarks/results

compile-check: $(STAMP)
	env -u TRITON_INTERPRET $(PY) -m normlib.kernels.check --out benchmarks/results/compile

format: $(STAMP)
	$(PY) -m black --unstable --line-length 88 chapters

lab: $(STAMP)
	$(VENV)/bin/jupyter lab chapters/

clean:
	rm -rf _build results .pytest_cache
