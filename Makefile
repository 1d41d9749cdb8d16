# Two commands a newcomer needs: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test install install-dev migrate lock clean

$(VENV)/.runtime: requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

migrate: install
	$(PY) manage.py migrate --no-input

run: migrate
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# Re-pin every transitive dependency after changing requirements*.txt.
lock:
	rm -rf /tmp/callpull-lock && $(PYTHON) -m venv /tmp/callpull-lock
	/tmp/callpull-lock/bin/pip install --quiet -r requirements-dev.txt
	/tmp/callpull-lock/bin/pip freeze --exclude-editable | sort > constraints.txt

clean:
	rm -rf $(VENV) callpull.sqlite3* .pytest_cache
