"""A module that exists but imports a dependency that does not."""

import onestep_missing_dependency_xyz  # noqa: F401

from onestep import OneStepApp

app = OneStepApp("never-built")
