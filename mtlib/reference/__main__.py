"""`python -m mtlib.reference --trace DIR -- generate_multitalk.py ARGS` (mtlib.cli.reference_trace)."""

from mtlib.cli.reference_trace import main

raise SystemExit(main())
