# LabelHub: `make run` for a first look, `make test` for the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The Redis that `make run` starts for itself when REDIS_URL is not set (data in var/redis/).
RUN_REDIS_PORT ?= 6391
# Tests run against real PostgreSQL and Redis (override to point elsewhere).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/labelhub
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test serve worker services browser lint bench-import clean

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## run: install, then start a private Redis (unless REDIS_URL is set), migrate, create the demo project and admin, and serve on http://$(HOST):$(PORT) with an RQ worker; Ctrl-C stops them all
run: export DEBUG ?= 1
run: $(VENV)/.runtime
	$(BIN)/python -m labelhub.firstlook --host $(HOST) --port $(PORT) --redis-port $(RUN_REDIS_PORT)

## services: start PostgreSQL and Redis if they are installed here and stopped
services:
	@if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; fi
	@if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; fi
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done

## browser: Debian's Chromium and ChromeDriver for the browser tests (never `playwright install`)
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "Install chromium (e.g. apt-get install chromium chromium-driver) to run the browser tests"; fi; \
	fi

## lint: the import layers (import-linter), ruff and mypy; `make test` runs it first
lint: $(VENV)/.dev
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	DEBUG=1 $(BIN)/mypy

## test: install, lint, start services, run the whole suite against PostgreSQL and Redis
test: export DEBUG = 1
test: export DATABASE_URL = $(TEST_DATABASE_URL)
test: export REDIS_URL = $(TEST_REDIS_URL)
test: $(VENV)/.dev lint services browser
	$(BIN)/python manage.py check
	DATABASE_URL=sqlite:///:memory: $(BIN)/python manage.py makemigrations --check --dry-run >/dev/null
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

## serve: production server (gunicorn, DEBUG off, static files by whitenoise); needs SECRET_KEY
serve: export DEBUG = 0
serve: $(VENV)/.runtime
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput
	$(BIN)/gunicorn labelhub.wsgi --bind $(HOST):$(PORT) --workers $${WEB_CONCURRENCY:-3} --timeout 120

## worker: an RQ worker for this deployment's Redis (run it on any machine that shares DATABASE_URL and REDIS_URL)
worker: $(VENV)/.runtime
	$(BIN)/python manage.py rqworker default gpu imports reports --with-scheduler

bench-import: $(VENV)/.dev
	$(BIN)/python benchmarks/import_bench.py

clean:
	rm -rf $(VENV) staticfiles
