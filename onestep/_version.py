"""The package version, read by setup.cfg and `onestep --version`."""

__version__ = "0.1.0"
