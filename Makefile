# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cropdoc-installed

.PHONY: demo test test-quick lint bench wheel-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cropdoc demo --out demo

# two workers, a test file each at a time (module fixtures are built once; the order:
# tests/conftest.py), each torch process on one thread: two workers of two threads each on
# two cores spent the cores waiting on each other (747 s of pytest, 689 s so; docs/benchmarks.md)
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/python tools/check_layers.py
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-quick: $(STAMP)  # the tests that train nothing end to end: a minute or two
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/python tools/check_layers.py
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

# The built wheel, installed alone in a fresh venv, has every file it needs: cropdoc comes
# from the wheel; its dependencies from .venv (a .pth line), so torch is not installed twice.
wheel-check: $(STAMP)
	rm -rf build/dist build/wheel-venv build/wheel-run && mkdir -p build
	$(BIN)/python -m build --sdist --wheel --outdir build/dist . >build/build.log 2>&1 \
		|| { tail -20 build/build.log; exit 1; }
	$(PYTHON) -m venv build/wheel-venv
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		>"$$(build/wheel-venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/dependencies.pth"
	build/wheel-venv/bin/python -m pip install --quiet --no-deps build/dist/*.whl
	mkdir -p build/wheel-run && cd build/wheel-run && ../wheel-venv/bin/python -c \
		"import cropdoc, sys; sys.exit(0 if 'wheel-venv' in cropdoc.__file__ else 'not the wheel')"
	cd build/wheel-run && ../wheel-venv/bin/cropdoc --help >/dev/null
	cd build/wheel-run && ../wheel-venv/bin/python -c "from importlib import resources; \
		assert resources.files('cropdoc.serve').joinpath('page.html').is_file(); \
		assert resources.files('cropdoc.audit').joinpath('review.html').is_file(); \
		assert resources.files('cropdoc.inference').joinpath('web/app.js').is_file(); \
		assert resources.files('cropdoc.inference').joinpath('web/sw.js').is_file()"
	cd build/wheel-run && ../wheel-venv/bin/cropdoc demo-data data --per-class 4 --json >/dev/null
	cd build/wheel-run && ../wheel-venv/bin/cropdoc train data --arch test_resnet --no-pretrained \
		--epochs 1 --freeze-epochs 0 --bs 4 --size 64 --item-size 64 --cache-size 96 \
		--cache cache --out run --json >/dev/null
	test -s build/wheel-run/run/model.safetensors && test -s build/wheel-run/run/trust.safetensors
	@echo "wheel-check: $$(ls build/dist | tr '\n' ' ')installed alone, trained"
