"""Compiled forms of a type definition (state machine and custom-data validator), built once per version.

Pure domain code: the cache is keyed by (id, version), so a changed type is recompiled on first use and the
old entry simply ages out.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from virtualq.fsm import Machine

MAX_CUSTOM_DATA_BYTES = 64 * 1024
MAX_CUSTOM_DATA_DEPTH = 32
CACHE_SIZE = 2048


@dataclass(frozen=True)
class CompiledType:
    id: uuid.UUID
    version: int
    machine: Machine | None
    validator: Draft202012Validator | None

    def custom_data_errors(self, data: Any) -> list[dict[str, Any]]:
        """Every problem with `data`: size and depth limits first, then the type's JSON Schema."""
        problems = limit_errors(data)
        if problems or self.validator is None:
            return problems
        return [
            {
                "path": "/".join(str(part) for part in error.absolute_path),
                "message": error.message,
                "validator": str(error.validator),
            }
            for error in sorted(
                self.validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))
            )
        ]


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a hostile document must not exhaust the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > MAX_CUSTOM_DATA_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def limit_errors(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, dict):
        return [{"path": "", "message": "custom_data must be an object", "validator": "type"}]
    if _depth(data) > MAX_CUSTOM_DATA_DEPTH:
        return [
            {
                "path": "",
                "message": f"custom_data is nested deeper than {MAX_CUSTOM_DATA_DEPTH} levels",
                "validator": "maxDepth",
            }
        ]
    if len(orjson.dumps(data)) > MAX_CUSTOM_DATA_BYTES:
        return [
            {
                "path": "",
                "message": f"custom_data is larger than {MAX_CUSTOM_DATA_BYTES} bytes",
                "validator": "maxSize",
            }
        ]
    return []


def json_schema_problems(schema: Any) -> list[str]:
    """Why `schema` is not a valid Draft 2020-12 JSON Schema (empty when it is)."""
    if not isinstance(schema, dict):
        return ["custom_fields_schema must be a JSON Schema object"]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        return [f"{where or 'schema'}: {exc.message}"]
    return []


_cache: OrderedDict[tuple[uuid.UUID, int], CompiledType] = OrderedDict()


def forget() -> None:
    _cache.clear()


def cached(type_id: uuid.UUID, version: int) -> CompiledType | None:
    """The compiled type if this process has it already (then its schemas need not be read again)."""
    return _cache.get((type_id, version))


def compiled(type_id: uuid.UUID, version: int, fsm_schema: Any, custom_fields_schema: Any) -> CompiledType:
    key = (type_id, version)
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    machine = Machine.from_schema(fsm_schema) if fsm_schema is not None else None
    validator = Draft202012Validator(custom_fields_schema) if custom_fields_schema is not None else None
    result = CompiledType(type_id, version, machine, validator)
    _cache[key] = result
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return result
