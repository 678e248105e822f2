"""What every command module shares: where it declares its commands, how they fail."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

# The object a module adds its subcommands to (``parser.add_subparsers()``).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def fail(message: str, code: int = 1) -> int:
    """Print ``attnserve: message`` on stderr; returns ``code`` for the command to exit with."""
    print(f"attnserve: {message}", file=sys.stderr)
    return code
