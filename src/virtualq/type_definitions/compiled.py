"""Compiled forms of a type definition (state machine and custom-data validator), built once per version.

Pure domain code: the cache is keyed by (id, version), so a changed type is recompiled on first use and the
old entry simply ages out.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

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
        try:
            errors = sorted(self.validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
        except Exception:
            # A schema stored before its references were checked (json_schema_problems) and found broken
            # only now: the type must be fixed, the request cannot pass.
            return [
                {
                    "path": "",
                    "message": "this ticket type's custom_fields_schema has a reference that cannot be "
                    "followed; an admin must correct the type",
                    "validator": "$ref",
                }
            ]
        return [
            {
                "path": "/".join(str(part) for part in error.absolute_path),
                "message": error.message,
                "validator": str(error.validator),
            }
            for error in errors
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
    return reference_problems(schema)


# References stay inside the schema: "#" or a JSON pointer into it. Nothing is ever fetched (a `$ref` to a
# URL would make the server request it, from inside the network, while the request waits).
_UNSUPPORTED_REFERENCES = ("$dynamicRef", "$recursiveRef")
# Keywords that would make a "#/..." reference mean something other than a pointer from the root: an `$id`
# below the root starts a new base, an `$anchor` names a place. Only the root may carry `$id`.
_UNSUPPORTED_BELOW_ROOT = ("$id", "$anchor", "$dynamicAnchor")


def _subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """`schema` and every schema inside it, by the keywords of Draft 2020-12 (not by key names: a property
    called "$ref" is a property)."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(DRAFT202012.subresources_of(item))


def _target(root: dict[str, Any], reference: str) -> Any:
    """What a local reference ("#" or "#/json/pointer") points to; LookupError if nothing."""
    if reference == "#":
        return root
    if not reference.startswith("#/"):
        raise LookupError
    node: Any = root
    # As the validator reads it: the whole fragment is percent-decoded first, then split into tokens.
    for raw in unquote(reference[1:]).split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError
    if not isinstance(node, dict | bool):
        raise LookupError  # a value inside the schema, not a schema
    return node


def reference_problems(schema: dict[str, Any]) -> list[str]:
    """References that point outside the schema or to nothing in it, and references that lead back to
    themselves (validation would never end)."""
    problems: list[str] = []
    targets: dict[int, Any] = {}  # id of a referenced schema -> the schema
    edges: dict[int, list[int]] = {}

    def note(problem: str) -> None:
        if problem not in problems:
            problems.append(problem)

    def refs_in(node: Any) -> list[int]:
        found = []
        for sub in _subschemas(node):
            for keyword in _UNSUPPORTED_REFERENCES:
                if keyword in sub:
                    note(f"{keyword} is not supported")
            for keyword in _UNSUPPORTED_BELOW_ROOT:
                if keyword in sub and (sub is not schema or keyword != "$id"):
                    note(f"{keyword} is not supported" + (" below the root" if keyword == "$id" else ""))
            reference = sub.get("$ref")
            if not isinstance(reference, str):
                continue
            try:
                target = _target(schema, reference)
            except LookupError:
                problems.append(
                    f'$ref {reference[:200]!r} must point inside this schema ("#" or "#/$defs/...")'
                    if not reference.startswith("#")
                    else f"$ref {reference[:200]!r} points to no schema in this schema"
                )
                continue
            if isinstance(target, dict):
                try:
                    Draft202012Validator.check_schema(target)
                except SchemaError as exc:
                    note(
                        f"$ref {reference[:200]!r} points to something that is not a valid schema: "
                        + exc.message
                    )
                    continue
            targets[id(target)] = target
            found.append(id(target))
        return found

    refs_in(schema)
    pending = list(targets)
    while pending:
        key = pending.pop()
        if key not in edges:
            edges[key] = refs_in(targets[key])
            pending.extend(edges[key])
    if problems:
        return problems
    # A reference cycle: a referenced schema reaches itself through the references inside it.
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if state.get(start):
            continue
        path = [(start, iter(edges[start]))]
        state[start] = 1
        while path:
            node, children = path[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                path.pop()
            elif state.get(child) == 1:
                return ["$ref must not lead back to a schema that contains it (recursion is not supported)"]
            elif not state.get(child):
                state[child] = 1
                path.append((child, iter(edges[child])))
    return []


def _no_retrieval(uri: str) -> Any:
    raise NoSuchResource(uri)


_LOCAL_ONLY: Registry[Any] = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


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
    validator = (
        Draft202012Validator(custom_fields_schema, registry=_LOCAL_ONLY)
        if custom_fields_schema is not None
        else None
    )
    result = CompiledType(type_id, version, machine, validator)
    _cache[key] = result
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return result
