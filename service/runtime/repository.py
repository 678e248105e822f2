"""The model repository: every ``.onnx`` file in a directory, served by name and version."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from service.errors import NotFound
from service.runtime.batcher import BatchObserver, DynamicBatcher
from service.runtime.cpus import usable_cpus
from service.runtime.manifest import Manifest, ManifestError, sidecar_path
from service.runtime.manifest_check import check_manifest
from service.runtime.session import ModelSession, SessionOptions
from service.runtime.tasks import InferenceTask, inference_task

log = logging.getLogger(__name__)

State = Literal["empty", "loading", "ready", "failed"]


@dataclass(frozen=True)
class BatchLimits:
    """A batcher's limits (see :class:`DynamicBatcher`)."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int


@dataclass
class ServedModel:
    """A loaded model: its manifest, session, batcher and task runner."""

    manifest: Manifest
    path: Path
    session: ModelSession
    batcher: DynamicBatcher
    task: InferenceTask
    load_s: float
    warmup_s: float
    # The CPU instances beside the main session (the batcher's helpers).
    helpers: list[ModelSession] = field(default_factory=list)

    def hold_arenas(self) -> Callable[[], None]:
        """Hold every session's arena for a scene job (:meth:`ModelSession.hold_arena`).

        Returns the release, which gives the growth back (call it off the event loop).
        """
        releases = [s.hold_arena() for s in (self.session, *self.helpers)]

        def release() -> None:
            for give_back in releases:
                give_back()

        return release


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``1.10.0`` after ``1.9.0`` and numbers before words."""
    parts = re.split(r"[.\-+]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


class ModelRepository:
    """Loads the models of one directory and resolves ``name`` / ``name:version``.

    Args:
        directory: where the ``.onnx`` files are.
        options: how sessions are built.
        limits: batch limits for a manifest (they differ by task).
        observer: makes a batch observer for a model reference.
        warmup: run each model once before it is served.
        serve_as: serve the directory's one model (all its versions) under this name
            instead of its manifest's, as KServe names a model after its InferenceService.
            A directory of several models serves them under their own names and must
            hold one of this name.
    """

    def __init__(
        self,
        directory: Path,
        options: SessionOptions,
        limits: Callable[[Manifest], BatchLimits],
        observer: Callable[[Manifest], BatchObserver | None] = lambda _m: None,
        warmup: bool = True,
        serve_as: str | None = None,
    ) -> None:
        self.directory = directory
        self.serve_as = serve_as
        self.options = options
        self._limits = limits
        self._observer = observer
        self._warmup = warmup
        self._models: dict[str, dict[str, ServedModel]] = {}
        self.failures: dict[str, str] = {}
        self.state: State = "empty"

    def files(self) -> list[Path]:
        """The model files in the repository directory."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.onnx") if p.is_file())

    async def load(self) -> None:
        """Load, warm up and start every model; a broken file is logged and skipped."""
        self.state = "loading"
        opened: list[tuple[Path, ModelSession, float]] = []
        for path in self.files():
            try:
                opened.append((path, *await asyncio.to_thread(self._open, path)))
            except Exception as exc:
                self._skip(path, exc)
        try:
            name = self._served_name({session.manifest.name for _, session, _ in opened})
        except ManifestError as exc:
            for path, _, _ in opened:
                self._skip(path, exc)
            opened = []
        for path, session, load_s in opened:
            try:
                served = await asyncio.to_thread(self._build, path, session, load_s, name)
            except Exception as exc:
                self._skip(path, exc)
                continue
            versions = self._models.setdefault(served.manifest.name, {})
            if served.manifest.version in versions:
                msg = f"duplicate model {served.manifest.ref}; kept the first file"
                log.error("%s: %s", path.name, msg)
                self.failures[path.name] = msg
                continue
            await served.batcher.start()
            versions[served.manifest.version] = served
            log.info(
                "loaded %s from %s on %s (load %.2fs, warm-up %.2fs, %.0f bytes of working "
                "memory per %s)",
                served.manifest.ref,
                path.name,
                served.session.providers[0],
                served.load_s,
                served.warmup_s,
                served.session.activation_per_unit,
                served.task.unit,
            )
        self.state = "ready" if self._models else "failed"

    def _skip(self, path: Path, exc: Exception) -> None:
        log.error("cannot load model file %s: %s", path.name, exc)
        self.failures[path.name] = str(exc)

    def _served_name(self, names: set[str]) -> str | None:
        """The name that replaces the manifests' own, if ``serve_as`` asks for one.

        Raises:
            ManifestError: the directory holds several models, none named ``serve_as``.
        """
        if self.serve_as is None or not names or self.serve_as in names:
            return None
        if len(names) > 1:
            raise ManifestError(
                f"the model name {self.serve_as!r} (ATTNSERVE_MODEL_NAME) names one model, "
                f"but the directory holds {len(names)} and none of that name: "
                f"{', '.join(sorted(names))}"
            )
        return self.serve_as

    def _open(self, path: Path) -> tuple[ModelSession, float]:
        """A checked session of one file and the seconds it took to load."""
        start = time.perf_counter()
        session = ModelSession(path, self.options)
        load_s = time.perf_counter() - start
        manifest = session.manifest
        sidecar = sidecar_path(path)
        if session.manifest_source == "embedded" and sidecar.is_file():
            log.warning(
                "%s carries its own manifest, which wins over %s beside it", path.name, sidecar.name
            )
        problems = check_manifest(manifest, session.graph, session.run)
        if problems:
            where = sidecar.name if session.manifest_source == "sidecar" else "embedded manifest"
            raise ManifestError(f"{where}: {'; '.join(problems)}")
        return session, load_s

    def _build(
        self, path: Path, session: ModelSession, load_s: float, name: str | None
    ) -> ServedModel:
        """Warm up a session and give it its batcher and task, served as ``name`` if given."""
        manifest = session.manifest if name is None else replace(session.manifest, name=name)
        task_class = inference_task(manifest)
        helpers = self._helpers(path, session)
        if self._warmup:
            warmup_s = sum(
                s.warmup(
                    sizes=task_class.warmup_sizes(manifest, s.cuda_active), measure=s is session
                )
                for s in (session, *helpers)
            )
        else:
            warmup_s = 0.0
        limits = self._limits(manifest)
        for helper in helpers:
            # Each helper runs at most its share of a batch (DynamicBatcher).
            helper.keep_batches(max(1, limits.max_batch_size // len(helpers)))
        batcher = DynamicBatcher(
            manifest.ref,
            session.run,
            max_batch_size=limits.max_batch_size,
            max_queue_delay_ms=limits.max_queue_delay_ms,
            max_queue_size=limits.max_queue_size,
            padding=task_class.padding(manifest),
            observer=self._observer(manifest),
            helpers=[h.run for h in helpers],
        )
        return ServedModel(
            manifest,
            path,
            session,
            batcher,
            task_class(manifest, batcher),
            load_s,
            warmup_s,
            helpers,
        )

    def _helpers(self, path: Path, session: ModelSession) -> list[ModelSession]:
        """The CPU instances beside the main session, each with its share of the cores.

        None on CUDA, where one session already keeps the device busy.
        """
        count = self.options.cpu_instances
        if count < 2 or session.cuda_active:
            return []
        cores = self.options.intra_op_threads or usable_cpus()
        share = replace(self.options, intra_op_threads=max(1, cores // count))
        return [ModelSession(path, share) for _ in range(count)]

    async def stop(self, grace_s: float) -> None:
        """Stop every batcher, letting queued work finish within ``grace_s``."""
        await asyncio.gather(*(m.batcher.stop(grace_s) for m in self.all()))

    def all(self) -> list[ServedModel]:
        """Every loaded model version, by name then version."""
        return [
            versions[v]
            for name in sorted(self._models)
            for versions in [self._models[name]]
            for v in sorted(versions, key=version_key)
        ]

    def names(self) -> list[str]:
        """Names of the loaded models."""
        return sorted(self._models)

    def versions(self, name: str) -> list[ServedModel]:
        """Every version of ``name``, oldest first."""
        if name not in self._models:
            raise NotFound(f"no model named {name!r}; served: {', '.join(self.names()) or 'none'}")
        versions = self._models[name]
        return [versions[v] for v in sorted(versions, key=version_key)]

    def get(self, ref: str) -> ServedModel:
        """The model for ``name`` (latest version) or ``name:version``."""
        name, _, version = ref.partition(":")
        versions = self.versions(name)
        if not version:
            return versions[-1]
        for served in versions:
            if served.manifest.version == version:
                return served
        known = ", ".join(s.manifest.version for s in versions)
        raise NotFound(f"model {name!r} has no version {version!r}; versions: {known}")
