# Two commands a newcomer needs: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test install install-dev browser migrate lock clean vendor

$(VENV)/.runtime: requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-bench.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

migrate: install
	$(PY) manage.py migrate --no-input

# With no Twilio credentials (the embedded default) `manage.py serve` runs the development entry
# point settings name (simulators.asgi: the product with the simulator at /simulator/).
run: migrate
	PUBLIC_BASE_URL=$${PUBLIC_BASE_URL:-http://$(HOST):$(PORT)} $(PY) manage.py serve --host $(HOST) --port $(PORT)

# The import rules first (.importlinter: layers, one module per outside SDK), then the suite.
test: install-dev browser
	$(VENV)/bin/lint-imports --config .importlinter
	$(PY) -m pytest $(PYTEST_ARGS)

# The browser tests (tests/web) drive Debian's Chromium with the pinned Playwright package
# (from requirements-dev.txt); Playwright's own browser download is never used. Installed
# once, quietly; nothing happens when it is already there.
CHROMIUM ?= /usr/bin/chromium
APT_GET  := $(if $(filter 0,$(shell id -u)),,sudo )apt-get

browser:
	@test -x $(CHROMIUM) || { \
	  echo "Installing Debian's chromium for the browser tests (tests/web)"; \
	  $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium >/dev/null \
	  && test -x $(CHROMIUM) || { echo "Could not install chromium at $(CHROMIUM): tests/web need it" >&2; exit 1; }; }

# Re-pin every transitive dependency after changing requirements*.txt.
lock:
	rm -rf /tmp/callpull-lock && $(PYTHON) -m venv /tmp/callpull-lock
	/tmp/callpull-lock/bin/pip install --quiet -r requirements-dev.txt
	/tmp/callpull-lock/bin/pip freeze --exclude-editable | sort > constraints.txt

clean:
	rm -rf $(VENV) callpull.sqlite3* .pytest_cache

# The browser libraries of the web companion, vendored (no CDN, no build step): web/package.json
# pins @twilio/voice-sdk to one exact version and web/package-lock.json pins what npm fetches
# (with its integrity hash). `make vendor` installs exactly that (npm ci), copies the SDK's
# browser bundle (dist/twilio.min.js, the global `Twilio`) and its licence into
# callpull/static/callpull/vendor/ under the version's name, and writes their SHA256SUMS.
# The copies are committed: `make test` needs no npm (tests/callpull/test_vendor.py checks them).
VENDOR      := callpull/static/callpull/vendor
VOICE_SDK   := $(shell sed -n 's/^ *"@twilio\/voice-sdk": "\([0-9][0-9.]*\)".*/\1/p' web/package.json)

vendor:
	@test -n "$(VOICE_SDK)" || { echo "web/package.json pins no exact @twilio/voice-sdk version" >&2; exit 1; }
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	@installed=$$(node -p 'require("./web/node_modules/@twilio/voice-sdk/package.json").version'); \
	  test "$$installed" = "$(VOICE_SDK)" || { echo "npm installed @twilio/voice-sdk $$installed, not $(VOICE_SDK)" >&2; exit 1; }
	mkdir -p $(VENDOR)
	rm -f $(VENDOR)/twilio-voice-sdk-*
	cp web/node_modules/@twilio/voice-sdk/dist/twilio.min.js $(VENDOR)/twilio-voice-sdk-$(VOICE_SDK).min.js
	cp web/node_modules/@twilio/voice-sdk/LICENSE.md $(VENDOR)/twilio-voice-sdk-$(VOICE_SDK).LICENSE.md
	cd $(VENDOR) && sha256sum twilio-voice-sdk-$(VOICE_SDK).min.js twilio-voice-sdk-$(VOICE_SDK).LICENSE.md > SHA256SUMS

# Benchmarks (bench/README.md): `make bench` runs the quick profile (a few minutes),
# `make bench PROFILE=full` the long one. Results: bench/results/latest.{md,json}, plots.
PROFILE ?= quick

$(VENV)/.bench: $(VENV)/.runtime requirements-bench.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt -c constraints.txt
	touch $@

.PHONY: bench
bench: $(VENV)/.bench
	$(PY) -m bench run --profile $(PROFILE)
