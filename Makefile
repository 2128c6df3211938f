# matcraft.deploy developer commands. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COLLECTION_LINK := .cache/collections/ansible_collections/matcraft/deploy
# The Molecule scenarios `make test` runs, longest first; SCENARIO_JOBS of
# them run side by side (each has its own containers and network).
SCENARIOS ?= site backup_repos edge postgresql redis common preflight pki
# Scenarios left out of `make test`; `make scenarios-all` runs them too,
# `make molecule SCENARIO=name` one of them. `medium` (eight hosts, three
# upgrades and five app runs under request streams) alone takes 98 minutes
# of a 2-core machine as slow as CI's last one (41 with a fast one): with it,
# `make test` cannot end within CI's 90 minutes there (docs/testing.md).
SCENARIOS_EXTRA ?= medium
SCENARIO_JOBS ?= 2
SCENARIO ?=
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.cache/collections
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-z][a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(BIN)/ansible-playbook: requirements.txt
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (tests/testbed/testbed.sh tools)"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

.PHONY: venv
venv: $(BIN)/ansible-playbook $(COLLECTION_LINK) ## Create .venv with the pinned controller requirements

.PHONY: testbed
testbed: ## Start a Docker engine and build the systemd test images (idempotent)
	tests/testbed/testbed.sh all

.PHONY: setup
setup: ## Everything the tests need: host tools, venv, Docker engine, test images
	tests/testbed/testbed.sh tools
	$(MAKE) --no-print-directory venv
	tests/testbed/testbed.sh all

.PHONY: lint
lint: venv ## ansible-lint (production profile) and yamllint
	yamllint --strict .
	ansible-lint --profile production

.PHONY: unit
unit: venv ## Unit tests (filters, contract app, sidecar, specs)
	mkdir -p .cache/results
	pytest tests/unit --junitxml=.cache/results/unit.xml

.PHONY: docs
docs: venv ## Regenerate the variable tables of the role READMEs from meta/argument_specs.yml
	python tests/tools/role_docs.py

.PHONY: rules-test
rules-test: venv ## Alert rules (promtool test rules) and the nginx log program (mtail)
	tests/rules/run.sh

.PHONY: molecule
molecule: venv testbed ## Run one scenario: make molecule SCENARIO=name
	@test -n "$(SCENARIO)" || { echo "usage: make molecule SCENARIO=<name> (one of: $(SCENARIOS))"; exit 2; }
	molecule test -s $(SCENARIO)

.PHONY: scenarios
scenarios: venv testbed ## Run the Molecule scenarios of make test (SCENARIO_JOBS at a time)
	@if [ -n "$(strip $(SCENARIOS_EXTRA))" ]; then echo "not run by make test (see SCENARIOS_EXTRA in the Makefile for why each): $(SCENARIOS_EXTRA); make scenarios-all runs them"; fi
	MATCRAFT_SCENARIOS_NOT_RUN="$(SCENARIOS_EXTRA)" tests/testbed/scenarios.sh -j $(SCENARIO_JOBS) --summary $(SCENARIOS)

.PHONY: scenarios-all
scenarios-all: venv testbed ## Run every Molecule scenario, SCENARIOS_EXTRA included
	tests/testbed/scenarios.sh -j $(SCENARIO_JOBS) $(SCENARIOS) $(SCENARIOS_EXTRA)

.PHONY: demo
demo: testbed venv ## The small tier on the local Docker engine: deploy, print the URLs, verify (make demo-down removes it)
	tests/demo/demo.sh up

.PHONY: demo-down
demo-down: ## Remove the demo's containers, its network and .cache/demo
	tests/demo/demo.sh down

.PHONY: build
build: venv ## Build the Galaxy tarball
	ansible-galaxy collection build --force --output-path build/

.PHONY: test
# The last lines count every test, unit tests and scenarios together.
test: export MATCRAFT_SUMMARY_UNIT = 1
test: testbed lint unit build scenarios ## Lint, unit tests, build check and the scenarios of SCENARIOS (CI runs this)

.PHONY: clean
clean: ## Remove caches and build output (keeps .venv and test images)
	rm -rf build .cache .pytest_cache
	docker ps -aq --filter label=matcraft.testbed=true | xargs -r docker rm -f
	docker network ls -q --filter label=matcraft.testbed=true | xargs -r docker network rm
