import gc

gc.disable()  # no cyclic collections during a daemon's start-up imports (vpn_gw.cli.main decides)

from vpn_gw.cli import main  # noqa: E402 - after gc.disable, on purpose

raise SystemExit(main())
