from vpn_gw.cli import main

raise SystemExit(main())
