"""Inputs by reference: GeoTIFFs at https:// or s3:// URLs, read through ranged requests.

Every URL passes the guard (:mod:`service.pipeline.ssrf`) before anything is
connected to. HTTP is spoken here, not by GDAL, so that the connection goes to
the address the guard checked, each redirect hop is checked the same way, each
request has a timeout and the bytes read have a budget. GDAL sees a Python file
(rasterio's opener) and only ever opens it as a GeoTIFF: no VRT, no side files.
"""

from __future__ import annotations

import contextlib
import http.client
import posixpath
import re
import secrets
import socket
import ssl
import warnings
from collections.abc import Callable, Iterator
from pathlib import PosixPath
from typing import Any, Protocol
from urllib.parse import urljoin

import obstore
import rasterio
from obstore.exceptions import BaseError, NotFoundError
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader

from service.config import Settings
from service.errors import AttnserveError, Forbidden, InvalidInput, InvalidRaster, PayloadTooLarge
from service.jobs.objects import MAX_FETCH, MIN_FETCH, RangedReader, connect
from service.pipeline.reference_cache import CachedSource
from service.pipeline.ssrf import ReferenceGuard, Resolver, Target
from service.raster.gdal_env import HARDENED_GDAL, reserve_block_cache

MAX_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class RangeSource(Protocol):
    """Byte ranges of one referenced file."""

    url: str

    @property
    def read_bytes(self) -> int:
        """Bytes read so far."""
        ...

    def get(self, start: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes (fewer at the end) from ``start``, and the file's size."""
        ...


class ReadBudget:
    """The bytes one reference may read, shared by every reader of it (a scene job's passes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.read_bytes = 0

    def take(self, n: int) -> None:
        """Count ``n`` bytes read; PayloadTooLarge past the limit."""
        self.read_bytes += n
        if self.read_bytes > self.limit:
            raise PayloadTooLarge(
                f"reading the reference took more than {self.limit / 2**20:g} MB "
                "(ATTNSERVE_INPUT_MAX_READ_MB)"
            )


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to the address the guard checked, whatever the host resolves to now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.location.host, target.location.port, timeout=timeout)
        self.address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to the checked address, its certificate checked for the host."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(
            target.location.host,
            target.location.port,
            timeout=timeout,
            context=ssl.create_default_context(),
        )
        self.address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _Source:
    def __init__(self, target: Target, budget: ReadBudget) -> None:
        self.url = target.url
        self.budget = budget

    @property
    def read_bytes(self) -> int:
        """Bytes read from the reference so far (by every reader sharing its budget)."""
        return self.budget.read_bytes

    def take(self, n: int) -> None:
        self.budget.take(n)


class HTTPSource(_Source):
    """Ranged GETs of an http(s) reference; a redirect is followed only once its target passes."""

    def __init__(
        self, guard: ReferenceGuard, target: Target, timeout_s: float, budget: ReadBudget
    ) -> None:
        super().__init__(target, budget)
        self.guard = guard
        self.target = target
        self.timeout_s = timeout_s

    def get(self, start: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes from ``start`` (a 206 answer is required) and the file's size."""
        for _ in range(MAX_REDIRECTS + 1):
            target = self.target
            kind = _PinnedHTTPS if target.location.scheme == "https" else _PinnedHTTP
            conn = kind(target, self.timeout_s)
            try:
                conn.request(
                    "GET",
                    target.location.path,
                    headers={
                        "Range": f"bytes={start}-{start + length - 1}",
                        "Accept-Encoding": "identity",
                        "User-Agent": "attnserve",
                    },
                )
                response = conn.getresponse()
                if response.status in (301, 302, 303, 307, 308):
                    where = response.getheader("Location")
                    if not where:
                        raise InvalidInput("the reference redirected without a Location")
                    self.target = self.guard.check(urljoin(target.url, where))
                    continue
                if response.status == 200 and start == 0:
                    # A server without ranges (a STAC API's JSON): fine for what fits one GET.
                    size = int(response.getheader("Content-Length") or length + 1)
                    if size > length:
                        raise InvalidInput("the reference's server does not honour Range requests")
                    data = response.read(size)
                    self.take(len(data))
                    return data, len(data)
                if response.status != 206:
                    raise InvalidInput(
                        f"the reference answered HTTP {response.status} to a ranged GET "
                        "(its server must honour Range requests)"
                    )
                match = _CONTENT_RANGE.fullmatch(response.getheader("Content-Range") or "")
                if match is None or int(match[1]) != start:
                    raise InvalidInput("the reference's server answered a range it was not asked")
                data = response.read(min(length, int(match[2]) - start + 1))
            except (TimeoutError, OSError, http.client.HTTPException):
                raise InvalidInput(
                    "the reference could not be read (connection failed or timed out)"
                ) from None
            finally:
                conn.close()
            self.take(len(data))
            return data, int(match[3])
        raise InvalidInput(f"the reference redirected more than {MAX_REDIRECTS} times")


class S3Source(_Source):
    """Ranged GETs of an ``s3://bucket/key`` reference, with the server's AWS configuration."""

    def __init__(self, target: Target, budget: ReadBudget) -> None:
        super().__init__(target, budget)
        self.store = connect(f"s3://{target.location.host}")
        self.key = target.location.path.lstrip("/")
        self.size: int | None = None

    def get(self, start: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes from ``start`` and the object's size."""
        try:
            if self.size is None:
                self.size = int(obstore.head(self.store, self.key)["size"])
            data = bytes(
                obstore.get_range(
                    self.store, self.key, start=start, length=min(length, self.size - start)
                )
            )
        except NotFoundError:
            raise InvalidInput("the reference does not exist in its bucket") from None
        except BaseError:
            raise InvalidInput("the reference could not be read from its bucket") from None
        self.take(len(data))
        return data, self.size


class ReferenceReader(RangedReader):
    """A referenced file as a seekable Python file: GETs that grow while reading carries on."""

    def __init__(
        self, source: RangeSource, failed: Callable[[AttnserveError], None] | None = None
    ) -> None:
        first, size = source.get(0, MIN_FETCH)
        super().__init__(None, source.url, size)  # type: ignore[arg-type]
        self.source = source
        self.failed = failed
        self._held, self._held_at = memoryview(first), 0

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes from the current position.

        With ``failed`` (a reader GDAL calls), an error goes there and reads as
        the end of the file: an exception cannot cross GDAL's C callbacks.
        """
        if self.failed is None:
            return super().read(size)
        try:
            return super().read(size)
        except AttnserveError as exc:
            self.failed(exc)
        except OSError:
            self.failed(InvalidInput("the reference could not be read to its end"))
        return b""

    def _get(self, want: int) -> None:
        carries_on = self._at == self._held_at + len(self._held)
        self._fetch = min(2 * self._fetch, MAX_FETCH) if carries_on else MIN_FETCH
        length = min(max(want, self._fetch), self.size - self._at)
        data, _ = self.source.get(self._at, length)
        if not data:
            raise OSError("the reference ended before its size")
        self._held, self._held_at = memoryview(data), self._at


class References:
    """Opens this server's inputs by reference: the guard, timeouts and byte budget.

    Args:
        allowlist: URL prefixes that may be read.
        timeout_s: longest wait to connect or read.
        max_read_bytes: most bytes read from one reference (a scene job's every pass together).
        resolve: how host names are resolved (``socket.getaddrinfo``).
    """

    def __init__(
        self,
        allowlist: list[str],
        timeout_s: float,
        max_read_bytes: int,
        resolve: Resolver = socket.getaddrinfo,
    ) -> None:
        self.guard = ReferenceGuard(allowlist, resolve)
        self.timeout_s = timeout_s
        self.max_read_bytes = max_read_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> References:
        """The references of a server with ``settings``."""
        return cls(
            settings.input_allowlist,
            settings.input_timeout_s,
            int(settings.input_max_read_mb * 2**20),
        )

    def source(self, url: str, budget: ReadBudget | None = None) -> HTTPSource | S3Source:
        """The ranges of ``url``; Forbidden (403) before any connection when it may not be read.

        ``budget``: one shared with other readers of the reference (None: a new one).
        """
        target = self.guard.check(url)
        budget = budget or ReadBudget(self.max_read_bytes)
        if target.location.scheme == "s3":
            return S3Source(target, budget)
        return HTTPSource(self.guard, target, self.timeout_s, budget)

    def path(self, url: str) -> ReferencePath:
        """A path that rasterio opens through this server's reader of ``url``."""
        return ReferencePath.of(url, self)


def read_all(source: RangeSource, max_bytes: int) -> bytes | None:
    """The whole referenced file, or None when it is larger than ``max_bytes``."""
    reader = ReferenceReader(source)
    if reader.size > max_bytes:
        return None
    return reader.read()


def _opener(source: RangeSource, name: str, errors: list[AttnserveError]) -> Any:
    # The first GET now, so that its errors are raised as they are.
    first = [ReferenceReader(source, errors.append)]

    def opener(path: str, mode: str = "rb", **_: Any) -> ReferenceReader:
        # GDAL also asks for side files (.aux.xml, .ovr, .msk): a reference has none.
        if posixpath.basename(path) != name or "w" in mode:
            raise FileNotFoundError(path)
        return first.pop() if first else ReferenceReader(source, errors.append)

    return opener


@contextlib.contextmanager
def open_reference(source: RangeSource) -> Iterator[DatasetReader]:
    """A referenced GeoTIFF open for reading, GTiff driver only, hardened GDAL.

    A read that fails for the reference's sake (403, 413, a timeout) raises that
    error rather than GDAL's.
    """
    name = "input.tif"
    errors: list[AttnserveError] = []
    opener = _opener(source, name, errors)
    # A name of its own per open: rasterio keeps one opener per name at a time.
    urlpath = f"reference/{secrets.token_hex(8)}/{name}"
    with warnings.catch_warnings(), rasterio.Env(**HARDENED_GDAL):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = rasterio.open(urlpath, opener=opener, driver="GTiff")
        except RasterioError:
            if errors:
                raise errors[0] from None
            raise InvalidRaster("the reference could not be opened as a GeoTIFF") from None
        with dataset:
            reserve_block_cache()
            try:
                yield dataset
            except RasterioError:
                if errors:
                    raise errors[0] from None
                raise


class ReferencePath(PosixPath):
    """A scene input at a URL, as a path: rasterio opens it through :class:`References`.

    rasterio opens an object with ``path`` and ``fs`` attributes (fsspec's
    OpenFile) as ``fs.open(path)``: so the scene reader, which opens paths,
    reads a reference window by window without knowing it is one.
    """

    url: str
    path: str
    fs: _ReferenceFS

    @classmethod
    def of(cls, url: str, references: References) -> ReferencePath:
        """The path of ``url``, read through ``references``."""
        # Made as any path, then given its attributes: Path's constructor differs
        # between Python 3.11 and 3.12, so neither __new__ nor __init__ is overridden.
        self = cls("/", "reference", secrets.token_hex(8), "input.tif")
        self.url = url
        self.path = str(self)
        self.fs = _ReferenceFS(url, references, self.name)
        return self


class _ReferenceFS:
    def __init__(self, url: str, references: References, name: str) -> None:
        self.url = url
        self.references = references
        self.name = name
        # What refused the reference, for the caller: GDAL only sees a failed open.
        self.error: AttnserveError | None = None
        self.budget = ReadBudget(references.max_read_bytes)
        self.cached: CachedSource | None = None  # one for every pass over the file

    def failed(self, error: AttnserveError) -> None:
        self.error = self.error or error

    def open(self, path: str, mode: str = "rb", **_: Any) -> ReferenceReader:
        if posixpath.basename(path) != self.name or "w" in mode:
            raise FileNotFoundError(path)
        if self.error is not None:
            raise OSError(self.error.message)  # GDAL tries again: refused once is enough
        try:
            if self.cached is None:
                self.cached = CachedSource(self.references.source(self.url, self.budget))
            return ReferenceReader(self.cached, self.failed)
        except AttnserveError as exc:
            self.error = exc
            raise OSError(exc.message) from None


__all__ = ["Forbidden", "ReferencePath", "References", "open_reference", "read_all"]
