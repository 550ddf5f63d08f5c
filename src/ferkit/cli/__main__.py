"""`python -m ferkit.cli ...` is the `ferkit` command (as `python -m ferkit ...`)."""
from . import main

main()
