"""`python -m onestep`: the same command as the `onestep` console script."""

from onestep.cli import main

main()
