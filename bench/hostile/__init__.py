"""The hostile-load suite: small requests that ask a live server for a lot.

Run ``python -m bench.hostile`` (``--list`` names the cases, ``--cases a,b`` runs
some, ``--label before|after`` names the run, ``--soak 150`` adds the round-one
soak with the new cases mixed in). Each case gets a live ``python -m service``
on 127.0.0.1 with its job directory on /tmp; the results are merged into
``bench/hostile/results.json`` and ``results.md``.
"""

from __future__ import annotations

from bench.hostile.harness import Case


def all_cases() -> list[Case]:
    """Every case, cheap shared-server ones first and the poison job (restarts) last."""
    from bench.hostile.input_cases import input_cases
    from bench.hostile.memory_cases import event_loop_cases, memory_cases
    from bench.hostile.restart_cases import poison_case, slow_body_case

    return [
        *input_cases(),
        *memory_cases(),
        slow_body_case(),
        *event_loop_cases(),
        poison_case(),
    ]
