# The two entry points a newcomer needs: `make demo` and `make test`.
.PHONY: setup demo test test-fast lint install-service

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/vpn-gw demo

test: setup
	.venv/bin/python -m pytest -q -ra

test-fast: setup
	.venv/bin/python -m pytest -q -ra -m "not interop and not netns"

# Linter and type checker (configured in pyproject.toml: ruff rules; mypy strict on ikev2/esp).
lint:
	.venv/bin/ruff check .
	.venv/bin/mypy -p ikev2 -p esp -p vpn_gw

# Install as a systemd service (/opt/vpn-gw, user vpn-gw, /etc/vpn-gw; docs/deploy.md). Root.
install-service:
	./scripts/install-service.sh
