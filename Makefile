# w2v: every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.setup-done
# torch and torchaudio must be a matched pair (torchaudio fails to import beside another torch,
# and transformers imports torchaudio when present): install them together, first.
TORCH_PKGS := torch==2.14.1 torchaudio==2.11.0
APT_PKGS := espeak-ng sox libsox-fmt-mp3 flac lame ffmpeg fortunes cmake build-essential libtcmalloc-minimal4 \
	libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev \
	zlib1g-dev libbz2-dev liblzma-dev

.PHONY: setup test lint demo bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/build_kenlm.sh
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			echo "apt-get install $$missing"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
		fi; \
	else echo "not root: make sure these Debian packages are installed: $(APT_PKGS)"; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH_PKGS)
	$(PIP) install -q --disable-pip-version-check -e '.[dev]' $(TORCH_PKGS)
	# pipeline() decodes an exported LM with pyctcdecode, whose metadata pins numpy<2: without its deps
	$(PIP) install -q --disable-pip-version-check --no-deps 'pyctcdecode==0.5.0'
	bash scripts/build_kenlm.sh $(VENV)
	touch $(STAMP)

lint: setup  # the project's own files: a scratch script beside them does not fail the tests
	$(VENV)/bin/ruff check train.py w2v tests tools benchmarks

test: setup lint
	$(VENV)/bin/pytest -q

demo: setup
	$(PY) tools/demo.py --out runs/demo

bench: setup
	$(PY) benchmarks/bench_shard.py --json benchmarks/results/shard.json

clean-venv:
	rm -rf $(VENV)
