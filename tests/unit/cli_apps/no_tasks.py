"""An app without tasks: `onestep run` refuses it, `onestep check` says so (exit 2)."""

from onestep import OneStepApp

app = OneStepApp("empty")
