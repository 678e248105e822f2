"""``python -m bench.hostile``: run the hostile cases and write their results."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import rasterio

from bench.hostile import all_cases
from bench.hostile.harness import Harness
from bench.hostile.report import markdown
from bench.machine import git_sha, load_average, machine
from tests.helpers.server import REPO


def write(out: Path, label: str, partial: bool, run: dict[str, Any]) -> None:
    """Merge a run into ``out.json`` and rewrite ``out.md``.

    A partial run (some cases, or the soak alone) updates the run of that label.
    """
    path = out.with_suffix(".json")
    results: dict[str, Any] = {"runs": {}}
    if path.exists():
        results = json.loads(path.read_text())
    about = machine()
    results["machine"] = {
        **about,
        "memory_gib": about["ram_gib"],
        "gdal": rasterio.__gdal_version__,
    }
    previous = results["runs"].get(label)
    if previous and partial:
        previous["cases"].update(run["cases"])
        previous["soak"] = run.get("soak", previous.get("soak"))
        run = {**previous, "commit": run["commit"], "started": run["started"]}
    results["runs"][label] = run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the cases (and the mixed soak), merge and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default="all", help="comma-separated case names, all, or none")
    parser.add_argument("--label", default="after", help="run label (before, after, ...)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "hostile" / "results")
    parser.add_argument("--cap-mb", type=float, default=4096, help="SIGKILL the server above")
    parser.add_argument("--soak", type=float, default=0, help="seconds of mixed soak (0: none)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--commit", help="the code's commit, where the tree is not a checkout")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)

    cases = all_cases()
    if args.list:
        for c in cases:
            print(f"{c.name:24} {c.group:18} {c.what}")
        return 0
    if args.cases == "none":  # the soak alone
        cases = []
    elif args.cases != "all":
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.name for c in cases}
        if unknown:
            parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.name in wanted]
    model_dir = args.model_dir or Path(
        os.environ.get("ATTNSERVE_TEST_MODEL_DIR", REPO / "models" / "shipped")
    )
    run: dict[str, Any] = {
        "commit": args.commit or git_sha(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cap_mb": args.cap_mb,
        "load_average": load_average(),
        "cases": {},
    }
    harness = Harness(model_dir, args.cap_mb)
    try:
        for case in cases:
            print(f"-- {case.name}: {case.what}", flush=True)
            result = harness.run(case)
            run["cases"][case.name] = result
            print(json.dumps(result, default=str)[:1500], flush=True)
    finally:
        harness.close()
    write(args.out, args.label, args.cases != "all", run)
    if args.soak > 0:
        from bench.hostile.soak_mix import run_soak

        print(f"-- soak with the hostile cases mixed in, {args.soak:g} s", flush=True)
        run["soak"] = {**run_soak(model_dir, args.soak), "commit": run["commit"]}
        print(json.dumps(run["soak"], default=str)[:1500], flush=True)
        write(args.out, args.label, True, {**run, "cases": {}})
    missed = [
        n
        for n, r in run["cases"].items()
        if not r.get("skipped") and not all(r["targets"].values())
    ]
    print(f"wrote {args.out}.json and .md; cases missing a target: {', '.join(missed) or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
