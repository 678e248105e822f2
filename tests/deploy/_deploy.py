"""Helpers shared by the deploy tests: paths, a Dockerfile reader and a static
Helm template checker (no Docker engine or helm binary is needed)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CHART = ROOT / "helm" / "attnserve"
TEMPLATES = CHART / "templates"
YAMLLINT_CONFIG = DOCKER / ".yamllint"
VENV_BIN = Path(sys.executable).parent

# The server's metric contract: name -> Prometheus type.
CONTRACT_METRICS = {
    "attnserve_requests_total": "counter",
    "attnserve_request_duration_seconds": "histogram",
    "attnserve_queue_depth": "gauge",
    "attnserve_queue_wait_seconds": "histogram",
    "attnserve_batch_size": "histogram",
    "attnserve_inference_duration_seconds": "histogram",
    "attnserve_inference_errors_total": "counter",
    "attnserve_model_loaded": "gauge",
    "attnserve_jobs_stored": "gauge",
    "attnserve_in_flight_requests": "gauge",
}
# The shared scene queue's metrics (ATTNSERVE_QUEUE_URL), by the names agreed
# with the queue: its depth is one global value every replica reports alike.
QUEUE_METRICS = {
    "attnserve_queue_units": "gauge",
    "attnserve_queue_units_in_flight": "gauge",
    "attnserve_queue_claims_total": "counter",
    "attnserve_queue_unit_seconds": "histogram",
}
CONTRACT_METRICS.update(QUEUE_METRICS)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------
@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    line: int


@dataclass
class Dockerfile:
    """A Dockerfile split into instructions, with its global ARG defaults."""

    path: Path
    instructions: list[Instruction] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        df = cls(path)
        buf: list[str] = []
        start = 0
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            stripped = raw.strip()
            if not buf and (not stripped or stripped.startswith("#")):
                continue
            if buf and stripped.startswith("#"):
                continue  # a comment inside a continued instruction
            if not buf:
                start = number
            if stripped.endswith("\\"):
                buf.append(stripped[:-1].strip())
                continue
            buf.append(stripped)
            text = " ".join(part for part in buf if part)
            keyword, _, args = text.partition(" ")
            df.instructions.append(Instruction(keyword.upper(), args.strip(), start))
            buf = []
        return df

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def stages(self) -> list[list[Instruction]]:
        """Instructions grouped by build stage (each begins with FROM)."""
        out: list[list[Instruction]] = []
        for ins in self.instructions:
            if ins.keyword == "FROM":
                out.append([])
            if out:
                out[-1].append(ins)
        return out

    def global_args(self) -> dict[str, str]:
        """ARG defaults declared before the first FROM."""
        args: dict[str, str] = {}
        for ins in self.instructions:
            if ins.keyword == "FROM":
                break
            if ins.keyword == "ARG":
                name, _, default = ins.args.partition("=")
                args[name] = default
        return args

    def final_stage(self) -> list[Instruction]:
        return self.stages()[-1]

    def exec_form(self, keyword: str) -> list[str]:
        """The last KEYWORD of the final stage, which must be in exec (JSON) form."""
        found = [i for i in self.final_stage() if i.keyword == keyword]
        assert found, f"{self.path.name}: no {keyword} in the final stage"
        value = json.loads(found[-1].args)
        assert isinstance(value, list), f"{keyword} is not in exec form"
        assert all(isinstance(v, str) for v in value)
        return value

    def env(self) -> dict[str, str]:
        """ENV of the final stage (KEY=VALUE form)."""
        env: dict[str, str] = {}
        for ins in self.final_stage():
            if ins.keyword == "ENV":
                for token in shlex.split(ins.args):
                    key, sep, value = token.partition("=")
                    assert sep, f"ENV {ins.args!r}: use KEY=VALUE"
                    env[key] = value
        return env

    def command(self) -> list[str]:
        """ENTRYPOINT + CMD of the final stage: the container's command line."""
        return self.exec_form("ENTRYPOINT") + self.exec_form("CMD")


# --------------------------------------------------------------------------
# Helm templates
# --------------------------------------------------------------------------
ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
VALUES_PATH = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
INCLUDE = re.compile(r"\b(?:include|template)\s+\"([^\"]+)\"")
DEFINE = re.compile(r"\bdefine\s+\"([^\"]+)\"")
BLOCK_OPENERS = {"if", "range", "with", "define", "block"}


def template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.iterdir() if p.is_file())


def actions(text: str) -> list[tuple[int, str]]:
    """(line, body) of every non-comment action, trim markers removed."""
    out = []
    for match in ACTION.finditer(text):
        body = match.group(1).strip()
        body = body.removeprefix("-").removesuffix("-").strip()
        if body.startswith("/*"):
            continue
        out.append((text.count("\n", 0, match.start()) + 1, body))
    return out


def block_errors(text: str) -> list[str]:
    """Unbalanced {{ }} delimiters and if/range/with/define blocks vs ends."""
    errors = []
    opened, closed = text.count("{{"), text.count("}}")
    if opened != closed:
        errors.append(f"{opened} '{{{{' but {closed} '}}}}'")
    stack: list[tuple[str, int]] = []
    for line, body in actions(text):
        word = body.split(maxsplit=1)[0] if body else ""
        if word in BLOCK_OPENERS:
            stack.append((word, line))
        elif word == "else":
            if not stack or stack[-1][0] not in {"if", "with", "range"}:
                errors.append(f"line {line}: else outside if/with/range")
        elif word == "end":
            if not stack:
                errors.append(f"line {line}: end without an open block")
            else:
                stack.pop()
    errors.extend(f"line {line}: {word} never closed" for word, line in stack)
    return errors


def values_paths(text: str) -> set[str]:
    """Dotted .Values paths used in a template (without the .Values prefix)."""
    return {m.group(1).lstrip(".") for m in VALUES_PATH.finditer(text)}


def lookup_path(values: dict, dotted: str) -> bool:
    """Whether values has the dotted key path (a null leaf counts as present)."""
    node: object = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def defined_helpers() -> set[str]:
    names: set[str] = set()
    for path in template_files():
        names |= set(DEFINE.findall(path.read_text()))
    return names


def included_helpers(text: str) -> set[str]:
    return set(INCLUDE.findall(text))


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------
METRIC_IN_PROMQL = re.compile(r"\battnserve_[a-z0-9_]+")


def exposed_metric_names(exposition: str) -> set[str]:
    """Every name a PromQL query may use against this text exposition."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind.strip() == "histogram":
                names.update(name + s for s in HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def dashboard_queries(dashboard: dict) -> list[str]:
    """PromQL of every panel target (rows included) and templating query."""
    queries: list[str] = []

    def walk_panels(panels: list[dict]) -> None:
        for panel in panels:
            queries.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
            walk_panels(panel.get("panels", []))

    walk_panels(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and var.get("type") == "query":
            queries.append(query)
    return queries


def dashboard_metric_names(dashboard: dict) -> set[str]:
    names: set[str] = set()
    for query in dashboard_queries(dashboard):
        names |= set(METRIC_IN_PROMQL.findall(query))
    return names


def contract_metric_names() -> set[str]:
    """Names the contract makes queryable (histograms with their suffixes)."""
    names = set(CONTRACT_METRICS)
    for name, kind in CONTRACT_METRICS.items():
        if kind == "histogram":
            names.update(name + s for s in HISTOGRAM_SUFFIXES)
    return names
