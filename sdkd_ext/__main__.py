"""`python -m sdkd_ext` is the `sdkd` command."""

from .cli import main

raise SystemExit(main())
