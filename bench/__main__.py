"""`python -m bench ...` is `siteloc bench ...`."""

from bench.core import main

raise SystemExit(main(prog="python -m bench"))
