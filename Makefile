# The two commands of the README:
#   make demo   exporter + Prometheus + five dashboards rendered to out/*.png
#   make test   every test, including the integration tests against a real Prometheus
VENV ?= .venv
DURATION ?= 3m
DEMO_ARGS ?=
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint dashboards system-deps clean

$(STAMP): pyproject.toml
	@deploy/local/bootstrap.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

system-deps:
	@deploy/local/bootstrap.sh

demo: system-deps $(STAMP)
	$(VENV)/bin/drm-exporter demo --duration $(DURATION) --out out $(DEMO_ARGS)

test: system-deps $(STAMP)
	@deploy/local/bootstrap.sh --test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

dashboards: $(STAMP)
	$(VENV)/bin/drm-exporter dashboards
	$(VENV)/bin/python -m drm_exporter.kubernetes
	$(VENV)/bin/drm-exporter docs

clean:
	rm -rf out .pytest_cache .ruff_cache
