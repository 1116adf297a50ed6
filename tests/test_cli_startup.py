"""`newsletter --help` starts fast: heavy modules are imported only by the commands that use them.

Run in subprocesses, so that what other tests imported does not count. The start-up time itself is a
benchmark figure (bench/related_scale.py prints it), not a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click

from newsletter.cli import COMMANDS, main

HEAVY = ("sklearn", "numpy", "scipy", "premailer", "celery", "torch", "lxml", "cssutils")

PROBE = """
import json, sys
import click
import newsletter.cli
top = {m.split(".")[0] for m in sys.modules}
# Every command module too, as `newsletter issue --help` would load it.
ctx = click.Context(newsletter.cli.main)
for name in newsletter.cli.COMMANDS:
    newsletter.cli.main.get_command(ctx, name)
print(json.dumps([sorted(top), sorted({m.split(".")[0] for m in sys.modules})]))
"""


def test_importing_the_cli_and_its_commands_loads_no_heavy_module() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    cli_only, with_commands = json.loads(out)
    assert not set(HEAVY) & set(with_commands), sorted(set(HEAVY) & set(with_commands))
    # `newsletter --help` itself needs nothing of the domain: not even the database layer.
    assert "sqlalchemy" not in cli_only and "jinja2" not in cli_only


def test_help_lists_every_command_with_its_own_short_help() -> None:
    ctx = click.Context(main)
    for name, (_module, _attribute, short) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None and command.get_short_help_str(limit=1000) == short, name
    out = subprocess.run([sys.executable, "-m", "newsletter.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert f"\n  {name} " in out
    assert "Related-articles" in out
