"""pystac's JSON-schema validation against the schemas shipped in the package, never the network."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).parent / "stac_schemas"


@functools.cache
def vendored_schemas() -> dict[str, dict[str, Any]]:
    """Every shipped schema by its ``$id`` (without a trailing ``#``)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(SCHEMAS.rglob("*.json")):
        schema = json.loads(path.read_text())
        found[str(schema["$id"]).rstrip("#")] = schema
    return found


def offline_validator() -> Any:
    """A pystac validator that knows the shipped schemas and refuses to fetch any other.

    Needs ``jsonschema`` (pystac's validation does).
    """
    from pystac.validation import GetSchemaError, JsonSchemaSTACValidator

    class OfflineValidator(JsonSchemaSTACValidator):
        def __init__(self) -> None:
            super().__init__()
            # The shipped copies, over pystac's own: these are what Items are checked against.
            self.schema_cache.update(vendored_schemas())

        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            schema = self.schema_cache.get(schema_uri.rstrip("#"))
            if schema is None:
                raise GetSchemaError(schema_uri, LookupError("schema not shipped; no network"))
            return schema

    return OfflineValidator()


def validate_item(item: dict[str, Any]) -> list[str]:
    """Validate a STAC Item (as JSON) against core and extension schemas; the schemas used.

    Raises:
        pystac.errors.STACValidationError: the Item is not valid.
    """
    import pystac.validation

    used: list[str] = pystac.validation.validate_dict(item, validator=offline_validator())
    return used
