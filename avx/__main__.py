"""``python -m avx`` = the ``avx`` command."""

from avx.cli import main

main()
