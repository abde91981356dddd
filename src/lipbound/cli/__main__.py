"""``python -m lipbound.cli ...`` == ``lipbound ...``."""

from lipbound.cli.main import app

app(prog_name="lipbound")
