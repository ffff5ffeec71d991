"""A target whose import ends the process: `onestep run` must say so and exit 2."""

import sys

sys.exit(3)
