# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.11:
#   make run    set up and start the app on http://127.0.0.1:8000 (gunicorn, as in production)
#   make test   install what the tests need and run them
VENV ?= .venv
PYTHON ?= python3
# nginx stands in front of gunicorn (web/http/proxy.py), so slow clients cannot hold its threads
APP_APT_PACKAGES = nginx
# espeak-ng speaks the test audio; chromium is the browser the end-to-end test drives;
# postgresql gives the tests initdb and pg_ctl for a cluster of their own
TEST_APT_PACKAGES = espeak-ng chromium postgresql
# Node runs the official OpenAI Node SDK (tests/node, installed with npm ci); Debian's
# packages only where the machine has no Node of its own
NODE_APT_PACKAGES = nodejs npm
# kubectl renders the Kubernetes manifests (`kubectl kustomize`); Debian's only where the
# machine has no kubectl of its own (another package's would clash with it)
KUBE_APT_PACKAGES = kubernetes-client
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps test-deps run test

# the project itself last, as an editable package: `$(VENV)/bin/whisper-service` runs the
# checkout's code from any folder
$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements.txt
	$(VENV)/bin/python -m pip install --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/python -m pip install --no-deps -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(VENV)/bin/python -m pip install -r requirements-test.txt
	touch $@

setup: system-deps $(VENV)/.installed

# installed once; nginx lives in /usr/sbin, which a user's PATH may lack
system-deps:
	@test -x /usr/sbin/nginx || command -v nginx >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $(APP_APT_PACKAGES); }

test-deps: system-deps $(VENV)/.test-installed
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends $(TEST_APT_PACKAGES)
	@command -v npm >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq --no-install-recommends $(NODE_APT_PACKAGES)
	@command -v kubectl >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq --no-install-recommends $(KUBE_APT_PACKAGES)
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error

run: setup
	WHISPER_HOST=$(HOST) WHISPER_PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py

# two workers (pytest-xdist): a module runs whole on one, the live tests share one; the
# slowest tests and the whole run's time are printed at the end
TEST_WORKERS ?= 2
test: test-deps
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10
