"""The domain exceptions: one code each, a message for users, detail kept apart."""

from __future__ import annotations

import inspect

from service import errors as e


def _domain_errors() -> list[type[e.AttnserveError]]:
    return [
        cls
        for _, cls in inspect.getmembers(e, inspect.isclass)
        if issubclass(cls, e.AttnserveError)
    ]


def test_every_error_has_its_own_code() -> None:
    codes = [cls.code for cls in _domain_errors()]
    assert len(codes) == len(set(codes)) > 10


def test_raster_errors_are_input_errors() -> None:
    # A handler for invalid input catches what is wrong with an upload's raster too.
    for cls in (e.InvalidRaster, e.UnsupportedRaster):
        assert issubclass(cls, e.InvalidInput)
    assert not issubclass(e.PayloadTooLarge, e.InvalidInput)


def test_message_and_detail_are_kept_apart() -> None:
    exc = e.UnsupportedRaster("dtype complex64 is not supported", dtype="complex64", bands=3)
    assert str(exc) == exc.message == "dtype complex64 is not supported"
    assert exc.detail == {"dtype": "complex64", "bands": 3}
    busy = e.Overloaded("queue full", retry_after_s=2.5, queue="footprints")
    assert busy.retry_after_s == 2.5
    assert busy.detail == {"queue": "footprints"}
    assert e.Overloaded("queue full").retry_after_s == 1.0


def test_a_code_is_its_class_name_in_snake_case() -> None:
    assert e.NotFound.code == "not_found"
    assert e.UnsupportedMediaType.code == "unsupported_media_type"
    assert e.InvalidRaster("x").code == "invalid_raster"

    class QuotaSpent(e.Overloaded):
        """A refinement defined elsewhere: it reports its base's code."""

    class Gone(e.NotFound):
        """A refinement that names its own code."""

        code = "gone_for_good"

    assert QuotaSpent.code == "overloaded"
    assert Gone.code == "gone_for_good"
    assert e.AttnserveError.code == "error"
