"""``attnserve train FAMILY ...``: train a model (needs the train extra).

Each family's arguments are declared by its trainer module, which imports
torch; only the chosen family's module is imported, and only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from service.cli.base import Commands

TRAINERS = {"footprints": "models.train.footprints", "crops": "models.train.crops"}


def add_parser(sub: Commands) -> None:
    """Declare ``train`` and its families (for help; :func:`run` parses their arguments)."""
    p = sub.add_parser("train", help="train a model (needs the train extra)")
    families = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family, module_name in TRAINERS.items():
        fp = families.add_parser(family, help=f"train the {family} model")
        fp.set_defaults(trainer=module_name)


def wants(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is ``train FAMILY ...``, which the family's own parser reads."""
    return len(argv) >= 2 and argv[0] == "train" and argv[1] in TRAINERS


def run(argv: Sequence[str]) -> int:
    """Run ``train FAMILY ...`` with the rest of the line parsed by that family's trainer."""
    trainer = importlib.import_module(TRAINERS[argv[1]])
    tp = argparse.ArgumentParser(prog=f"attnserve train {argv[1]}")
    trainer.add_arguments(tp)
    return int(trainer.run(tp.parse_args(list(argv[2:]))))
