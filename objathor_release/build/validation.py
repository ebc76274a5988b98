"""Fast JSON Schema validation for the many small objects a release validates.

A release validates tens of thousands of annotations, nearly all of them
valid, and stock jsonschema spends most of its time copying its validator
for every property it descends into. ``FastValidator`` first runs a plain
Python predicate compiled from the schema that only ever answers "certainly
valid"; whatever it does not answer that way (an invalid object, or a schema
using keywords the compiler does not know) is validated by jsonschema's
Draft202012Validator, so every error reported is jsonschema's own.

The compiler knows the keywords objathor's schemas use: type, properties,
additionalProperties, required, items, pattern, minimum, maximum, the
exclusive bounds, minLength, maxLength and ``not: {required: [...]}``.
tests/test_annotations.py checks that it never accepts what jsonschema rejects.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

from objathor_release.settings import SCHEMA_DIR, load_schema

Predicate = Callable[[Any], bool]

_IGNORED = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"})


def _plain_number(x: Any) -> bool:
    return type(x) is int or type(x) is float


_TYPES: dict[str, Predicate] = {
    "string": lambda x: type(x) is str,
    "number": _plain_number,
    "integer": lambda x: type(x) is int or (type(x) is float and x.is_integer()),
    "boolean": lambda x: type(x) is bool,
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "null": lambda x: x is None,
}


def _all(preds: list[Predicate]) -> Predicate:
    if not preds:
        return lambda x: True
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda x: a(x) and b(x)
    return lambda x: all(p(x) for p in preds)


def _bound(op: Callable[[Any, Any], bool], limit: Any) -> Predicate:
    # Applies to numbers only (not bools); an unusual number type is left to jsonschema.
    def check(x: Any) -> bool:
        if _plain_number(x):
            return op(x, limit)
        return type(x) is bool or not isinstance(x, numbers.Number)

    return check


def _keyword(key: str, value: Any, schema: dict[str, Any]) -> Predicate | None:
    if key == "type":
        names = [value] if isinstance(value, str) else list(value)
        if not all(n in _TYPES for n in names):
            return None
        fns = [_TYPES[n] for n in names]
        return fns[0] if len(fns) == 1 else (lambda x: any(f(x) for f in fns))
    if key == "pattern":
        search = re.compile(value).search
        return lambda x: type(x) is not str or search(x) is not None
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        ops: dict[str, Callable[[Any, Any], bool]] = {
            "minimum": lambda x, m: x >= m, "maximum": lambda x, m: x <= m,
            "exclusiveMinimum": lambda x, m: x > m, "exclusiveMaximum": lambda x, m: x < m}
        return _bound(ops[key], value)
    if key == "minLength":
        return lambda x: type(x) is not str or len(x) >= value
    if key == "maxLength":
        return lambda x: type(x) is not str or len(x) <= value
    if key == "required":
        names = list(value)
        return lambda x: type(x) is not dict or all(n in x for n in names)
    if key == "not" and isinstance(value, dict) and value.keys() == {"required"}:
        # Valid exactly when the object lacks one of the names (required passes on non-objects).
        names = list(value["required"])
        return lambda x: type(x) is dict and not all(n in x for n in names)
    if key == "items":
        if "prefixItems" in schema:
            return None
        item = compile_schema(value)
        if item is None:
            return None
        return lambda x: type(x) is not list or all(item(i) for i in x)
    if key == "properties":
        if "patternProperties" in schema:
            return None
        props = {}
        for name, sub in value.items():
            pred = compile_schema(sub)
            if pred is None:
                return None
            props[name] = pred
        items = list(props.items())
        return lambda x: type(x) is not dict or all(p(x[n]) for n, p in items if n in x)
    if key == "additionalProperties":
        if "patternProperties" in schema:
            return None
        known = frozenset(schema.get("properties", {}))
        if value is False:
            return lambda x: type(x) is not dict or x.keys() <= known
        extra = compile_schema(value)
        if extra is None:
            return None
        return lambda x: type(x) is not dict or all(extra(v) for k, v in x.items() if k not in known)
    return None


def compile_schema(schema: Any) -> Predicate | None:
    """A predicate true only for instances ``schema`` certainly accepts; None if not compilable."""
    if schema is True:
        return lambda x: True
    if not isinstance(schema, dict):
        return None
    preds = []
    for key, value in schema.items():
        if key in _IGNORED:
            continue
        pred = _keyword(key, value, schema)
        if pred is None:
            return None
        preds.append(pred)
    return _all(preds)


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests objects and arrays more than ``limit`` levels deep.

    Checked without recursion, before anything recursive (validation, repr in
    error messages, serialization) sees a hostile document.
    """
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            children: Any = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return False


class FastValidator:
    """jsonschema's Draft202012Validator behind a compiled certainly-valid check."""

    def __init__(self, schema: dict[str, Any], **kwargs: Any) -> None:
        import jsonschema

        self.stock = jsonschema.Draft202012Validator(schema, **kwargs)
        self.schema = schema
        self.quick = compile_schema(schema)

    def iter_errors(self, instance: Any) -> Iterator[Any]:
        if self.quick is not None and self.quick(instance):
            return iter(())
        return iter(self.stock.iter_errors(instance))

    def is_valid(self, instance: Any) -> bool:
        return (self.quick is not None and self.quick(instance)) or self.stock.is_valid(instance)


# --------------------------------------------------------------------------- the shipped schemas


@cache
def schema_validator(name: str) -> FastValidator:
    """A draft 2020-12 validator for a shipped schema; ``$ref`` between shipped schemas resolves."""
    from referencing import Registry, Resource

    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        contents = load_schema(path.name.removesuffix(".schema.json"))
        resources.append((contents.get("$id", path.name), Resource.from_contents(contents)))
    registry: Registry[Any] = Registry().with_resources(resources)
    return FastValidator(load_schema(name), registry=registry)


def schema_errors(instance: Any, name: str) -> list[str]:
    """Validate ``instance`` against a shipped schema; return one line per problem, sorted."""
    return sorted(f"{err.json_path}: {err.message}" for err in schema_validator(name).iter_errors(instance))
