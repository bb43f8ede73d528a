# imgjobs: `make run` serves on PORT (default 8080); `make test` runs every check.
# Both set up what is missing first: Debian build packages (as root), .venv, pinned
# dependencies, and pillow-simd built from source.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What pillow-simd needs to build with JPEG, PNG, WebP, TIFF, LCMS and JPEG 2000 support.
DEBIAN_PACKAGES := gcc make zlib1g-dev libjpeg62-turbo-dev libwebp-dev libtiff-dev \
	liblcms2-dev libopenjp2-7-dev libfreetype-dev libimagequant-dev python3-dev python3-venv
# pillow-simd builds SSE4 code by default; AVX2 where the CPU has it.
SIMD_CFLAGS := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo -mavx2)

.PHONY: all run test lint typecheck pytest system setup clean bench bench-pillow bench-peers

all: test

system:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages: $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else \
			echo "missing Debian packages; run as root:"; \
			echo "  apt-get install -y $$missing"; \
			exit 1; \
		fi; \
	fi

$(STAMP): pyproject.toml requirements.lock | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	CC="cc $(SIMD_CFLAGS)" $(BIN)/pip install -q --no-binary pillow-simd -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@$(BIN)/python -c "import PIL; v = PIL.__version__; assert v.endswith('.post0'), \
		'stock Pillow ' + v + ' replaced pillow-simd'; print('pillow-simd', v)"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) data uploads outputs .mypy_cache .pytest_cache .ruff_cache
