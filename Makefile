# Every target bootstraps .venv itself, so a fresh machine needs only python3 and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: nat-deps demo test browser-deps pg-deps bench bench-deps bench-compare clean

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	# A regular (non-editable) install: editable installs hide twisted/plugins
	# from twistd's plugin scan. Tests import the installed package too.
	$(BIN)/pip install --quiet ".[test]"
	touch $(STAMP)

# Reinstall the package (fast, no dependency resolution) whenever its sources change.
$(VENV)/.code: $(STAMP) $(shell find mbt twisted -name '*.py' -o -name '*.js' -o -name '*.css' 2>/dev/null)
	$(BIN)/pip install --quiet --no-deps --force-reinstall --no-build-isolation .
	$(BIN)/twistd --help >/dev/null  # regenerates Twisted's plugin cache
	touch $(VENV)/.code

demo: $(VENV)/.code
	$(BIN)/python -m mbt.demo

test: $(VENV)/.code browser-deps pg-deps nat-deps
	$(BIN)/python -m pytest -q tests

# $(call apt_install,WHO,PACKAGES,WHAT WILL SKIP): install Debian packages as root,
# running `apt-get update` only when the first try fails; without root say what skips.
apt_install = if [ "$$(id -u)" = 0 ]; then \
	    echo "$(1): installing $(2) with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y $(2) \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(2); } \
	    || echo "$(1): could not install $(2); $(3) will skip"; \
	  else echo "$(1): $(2) missing and not root; $(3) will skip"; fi

# The web page's end-to-end tests drive a real headless Chromium (Debian's
# chromium + chromium-driver): installed here when missing and we are root (CI).
BROWSER_PACKAGES := chromium chromium-driver
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  $(call apt_install,browser-deps,$(BROWSER_PACKAGES),the browser tests); \
	fi

# The NAT tests build network namespaces with nftables masquerade (tests/netlab.py)
# and start peers under libfaketime: nftables, iproute2 and faketime, installed
# here when missing and we are root (CI).
NAT_PACKAGES := nftables iproute2 faketime
nat-deps:
	@if ! command -v nft >/dev/null || ! command -v ip >/dev/null || ! command -v faketime >/dev/null; then \
	  $(call apt_install,nat-deps,$(NAT_PACKAGES),the NAT tests); \
	fi

# The PostgreSQL-store tests start a private server from Debian's postgresql
# binaries (tests/pgserver.py); installed here when missing (root, as in CI).
pg-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  $(call apt_install,pg-deps,postgresql,the PostgreSQL-store tests); \
	fi

# Benchmarks (docs/performance.rst). Extra options: make bench BENCH_ARGS="--big --runs 5".
# matplotlib (the setup.py "bench" extra) draws the tracker's load curve.
BENCH_ARGS ?=
LT_PACKAGES := python3-libtorrent mktorrent opentracker time

bench-deps: $(VENV)/.code
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet matplotlib

bench: bench-deps pg-deps
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# The libtorrent half needs Debian's python3-libtorrent (for /usr/bin/python3),
# mktorrent and opentracker: installed here when missing. Without root or a
# network, compare.py skips that half and still prints mbt's figures.
bench-compare: bench-deps
	@if ! /usr/bin/python3 -c 'import libtorrent' 2>/dev/null || ! command -v mktorrent >/dev/null \
	    || ! command -v opentracker >/dev/null || ! test -x /usr/bin/time; then \
	  $(call apt_install,bench-compare,$(LT_PACKAGES),the libtorrent half); \
	fi
	$(BIN)/python benchmarks/compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache _trial_temp
