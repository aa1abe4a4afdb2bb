"""`python -m mtlib ...` is the same as the `mtlib` console script."""

from mtlib.cli import main

raise SystemExit(main())
