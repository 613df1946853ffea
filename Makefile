# The two entry points a newcomer needs: `make demo` and `make test`.
.PHONY: setup demo test test-fast

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/vpn-gw demo

test: setup
	.venv/bin/python -m pytest -q -ra

test-fast:
	.venv/bin/python -m pytest -q -ra -m "not interop and not netns"
