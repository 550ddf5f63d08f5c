"""`python -m ferkit ...` (and `torchrun -m ferkit ...`) is the `ferkit` command."""
from .cli import main

main()
