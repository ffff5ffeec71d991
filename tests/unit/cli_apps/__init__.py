"""Small apps that tests/unit/test_cli.py loads as `onestep run`/`check` targets."""
