"""`python -m fcgicompose`."""

from fcgicompose.cli import main

main()
