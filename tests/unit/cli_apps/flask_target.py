"""A Flask app where a OneStepApp is expected: the loader says it is not one, and what it is."""

from flask import Flask

app = Flask("not-onestep")
