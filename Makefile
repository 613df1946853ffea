# The two entry points a newcomer needs: `make demo` and `make test`.
.PHONY: setup demo test test-fast lint install-service

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/vpn-gw demo

# One line per test file with its progress ("tests/test_x.py ....  [ 12%]"), not -q's bare dots;
# -ra lists skips and failures at the end.
PYTEST_OPTS = -ra -o console_output_style=progress

test: setup lint
	.venv/bin/python -m pytest $(PYTEST_OPTS)

test-fast: setup
	.venv/bin/python -m pytest $(PYTEST_OPTS) -m "not interop and not netns"

# Linter and type checker (configured in pyproject.toml: ruff rules; mypy strict on ikev2/esp),
# zero findings: `make test` runs them first.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy -p ikev2 -p esp -p vpn_gw

# Install as a systemd service (/opt/vpn-gw, user vpn-gw, /etc/vpn-gw; docs/deploy.md). Root.
install-service:
	./scripts/install-service.sh
