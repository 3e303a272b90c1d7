"""Bounds on what steers constrained decoding: JSON schemas, regexes, grammars, choices, structural tags,
and the tool-call arguments a conversation replays.

Everything here reaches the engine's grammar compiler or its chat-template renderer, on the worker
that every tenant shares. Workers pin the fast backend (xgrammar, no fallback: worker/engine.py), and
the gateway refuses, with a 400 naming the field, what would still cost a worker dearly:

- **size**: all the schemas, patterns and choices of one request together are counted against one
  budget (``tool_choice: "required"`` turns every tool's ``parameters`` into one schema);
- **counts**: properties, tuple items, enum/const/choice values and ``anyOf``/``oneOf``/``allOf``
  branches per request; xgrammar's compile time grows faster than linearly with them (measured on
  SmolLM2's 49k-token vocabulary: 1,000 properties 0.23 s, 5,000 3.3 s, 20,000 35 s; 1,000 enum
  values 0.01 s, 10,000 0.4 s, 100,000 22 s);
- **numbers**: ``minItems``/``maxItems``/``minLength``/``maxLength``/``minProperties``/
  ``maxProperties``/``minContains``/``maxContains`` and ``{m,n}`` repetitions at most
  ``max_count``: the fallback backend expands them (``minItems`` 1e7: 1.4 s and 1.1 GB in the
  engine's API server), and no output longer than a context can satisfy a larger one anyway;
- **repetition weight**: xgrammar precomputes token masks for every step of a bounded repetition
  of characters, up to about 256 steps, for each distinct one: ``maxLength: 64`` costs ~0.8 s of
  CPU, ``maxLength`` ≥ 256 or ``.{1,256}`` ~2.2 s, ``[a-z]{1,64}`` ~0.08 s (200 string fields with
  distinct ``maxLength`` took over 600 s). Each distinct string length bound and each regex or
  grammar quantifier weighs ``min(bound, 256)``; a request carries at most ``repetition_weight``;
- **recursion**: a ``$ref`` cycle that nests no value (``{"$ref": "#"}``, ``anyOf: [{"$ref": "#"}]``)
  is a grammar no token can satisfy; references must point inside the schema (``#`` or ``#/…``);
- **depth**: schemas and tool-call arguments nest at most ``schema_depth``/``arguments_depth``
  levels; arguments are a JSON object (vLLM parses them to render the conversation, and recursed
  out at depth ~1,000 with a 500).

The limits are constants (:data:`LIMITS`); SECURITY.md lists them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from lorafleet.core.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class StructuredLimits:
    schema_bytes: int = 64 * 1024        # every schema, pattern, grammar and choice of a request, as JSON
    schema_depth: int = 32               # JSON nesting of one schema (objects and arrays)
    properties: int = 1_000              # properties + patternProperties + dependentSchemas, per request
    tuple_items: int = 1_000             # prefixItems (and array-form items) entries, per request
    enum_values: int = 1_000             # enum values + const + structured_outputs.choice, per request
    branches: int = 256                  # anyOf + oneOf + allOf entries, per request
    max_count: int = 10_000              # min/max Items/Length/Properties/Contains, {m,n} repetitions
    repetition_weight: int = 512         # Σ min(bound, 256) over distinct length bounds and quantifiers
    max_number: float = 2.0 ** 63        # |minimum|, |maximum|, |exclusiveMinimum|, |exclusiveMaximum|
    regex_chars: int = 4_096             # one regex (structured_outputs.regex, a schema's pattern)
    grammar_chars: int = 32_768          # one grammar (EBNF or Lark)
    choice_chars: int = 1_000            # one structured_outputs.choice value
    arguments_bytes: int = 1024 * 1024   # one tool call's arguments
    arguments_depth: int = 32            # JSON nesting of one tool call's arguments


LIMITS = StructuredLimits()

COUNT_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
                  "minContains", "maxContains")
NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Keywords whose value is a subschema, by the shape they hold it in. Whether a keyword nests a value
# (consumes output) decides whether a $ref cycle through it is productive.
_NESTING_SCHEMA = ("additionalProperties", "additionalItems", "contains", "propertyNames", "unevaluatedItems",
                   "unevaluatedProperties")
_INLINE_SCHEMA = ("not", "if", "then", "else")
_NESTING_LISTS = ("prefixItems",)
_INLINE_LISTS = ("allOf", "anyOf", "oneOf")
_NESTING_MAPS = ("properties", "patternProperties", "dependentSchemas")
_DEFINITION_MAPS = ("$defs", "definitions")  # reachable only through a $ref
_UNSUPPORTED_REFS = ("$dynamicRef", "$recursiveRef")
_PARAM_CHARS = 300
_REPETITION_STEPS = 256  # past this xgrammar's mask precomputation stops growing (measured)


class _Node:
    """A subschema: where it is, and the subschemas it becomes without nesting a value (refs, combinators)."""

    __slots__ = ("path", "param", "inline", "ref")

    def __init__(self, path: tuple[str | int, ...], param: str) -> None:
        self.path = path
        self.param = param
        self.inline: list[tuple[str | int, ...]] = []
        self.ref: str | None = None


def _child(param: str, key: str | int) -> str:
    return f"{param}[{key}]" if isinstance(key, int) else f"{param}.{key}"


def _refuse(message: str, param: str, code: str = "invalid_structured_output") -> InvalidRequest:
    return InvalidRequest(message, param=param[:_PARAM_CHARS], code=code)


class StructuredBudget:
    """One request's constrained-decoding inputs, checked against one shared budget.

    Call :meth:`schema`, :meth:`regex`, :meth:`grammar`, :meth:`choice` or :meth:`structural_tag` for
    each one the request carries; the first that is out of bounds raises :class:`InvalidRequest`
    whose ``param`` is the field at fault (``response_format.json_schema.schema.properties.a.minItems``).
    """

    def __init__(self, limits: StructuredLimits = LIMITS) -> None:
        self.limits = limits
        self.bytes = 0
        self.properties = 0
        self.tuple_items = 0
        self.enum_values = 0
        self.branches = 0
        self.repetition = 0
        self._weighed: set[object] = set()  # identical bounds compile once: weighed once

    # ---- entry points ------------------------------------------------------------------------

    def schema(self, schema: Any, param: str) -> None:
        """A JSON schema (a decoded object; ``true``/``false`` too)."""
        self._count_bytes(len(msgspec.json.encode(schema)), param)
        if isinstance(schema, bool):
            return
        if not isinstance(schema, dict):
            raise _refuse("a JSON schema must be an object", param)
        nodes = self._walk(schema, param)
        _check_references(schema, nodes, param)

    def schema_text(self, text: str, param: str) -> None:
        """A JSON schema sent as a string (``structured_outputs.json``)."""
        self._count_bytes(len(text.encode()), param)
        self.bytes -= len(text.encode())  # counted once, by schema() below
        self.schema(_parse_json(text, param, self.limits.schema_depth), param)

    def regex(self, pattern: str, param: str) -> None:
        self._count_bytes(len(pattern.encode()), param)
        self._regex(pattern, param)

    def _regex(self, pattern: str, param: str) -> None:
        if len(pattern) > self.limits.regex_chars:
            raise _refuse(f"a regular expression may be at most {self.limits.regex_chars} characters "
                          f"(got {len(pattern)})", param)
        counts = list(_regex_repetitions(pattern))
        for count in counts:
            self._check_repetition(count, param)
        self._weigh(("regex", pattern), counts, param)

    def grammar(self, text: str, param: str) -> None:
        self._count_bytes(len(text.encode()), param)
        if len(text) > self.limits.grammar_chars:
            raise _refuse(f"a grammar may be at most {self.limits.grammar_chars} characters (got {len(text)})", param)
        counts = [int(number) for match in _GRAMMAR_REPETITION.finditer(text) for number in match.groups() if number]
        for count in counts:
            self._check_repetition(count, param)
        self._weigh(("grammar", text), counts, param)

    def choice(self, values: list[str], param: str) -> None:
        self._count_bytes(sum(len(value.encode()) for value in values), param)
        for index, value in enumerate(values):
            if len(value) > self.limits.choice_chars:
                raise _refuse(f"a choice may be at most {self.limits.choice_chars} characters", _child(param, index))
        self._count("enum_values", len(values), param, "enum values and choices")

    def structural_tag(self, text: str, param: str) -> None:
        """xgrammar's structural tag (JSON in a string): every schema, pattern and grammar inside it."""
        self._count_bytes(len(text.encode()), param)
        tag = _parse_json(text, param, self.limits.schema_depth)
        self.bytes -= len(text.encode())  # the parts below count themselves
        for value, where in _walk_json(tag, param):
            if not isinstance(value, dict):
                continue
            for key in ("json_schema", "schema"):
                if isinstance(value.get(key), dict | bool):
                    self.schema(value[key], _child(where, key))
            if isinstance(value.get("pattern"), str):
                self.regex(value["pattern"], _child(where, "pattern"))
            if isinstance(value.get("grammar"), str):
                self.grammar(value["grammar"], _child(where, "grammar"))

    # ---- the schema walk ---------------------------------------------------------------------

    def _walk(self, root: dict[str, Any], param: str) -> dict[tuple[str | int, ...], _Node]:
        """Every subschema of ``root``, checked; data values (enum, const, default …) only for depth."""
        limits = self.limits
        nodes: dict[tuple[str | int, ...], _Node] = {}
        stack: list[tuple[Any, tuple[str | int, ...], str, int]] = [(root, (), param, 1)]
        while stack:
            schema, path, where, depth = stack.pop()
            if depth > limits.schema_depth:
                raise _refuse(f"the schema nests more than {limits.schema_depth} levels deep", where)
            if not isinstance(schema, dict):
                continue  # true/false, or a value no backend reads as a schema
            node = nodes[path] = _Node(path, where)
            children: list[tuple[Any, tuple[str | int, ...], str, int]] = []
            lengths = (schema.get("minLength"), schema.get("maxLength"))
            for key, value in schema.items():
                at = _child(where, key)
                if key in COUNT_KEYWORDS:
                    self._check_count(value, at)
                elif key in NUMBER_KEYWORDS:
                    self._check_number(value, at)
                elif key == "pattern" and isinstance(value, str):
                    self._regex(value, at)
                elif key == "$ref":
                    if not isinstance(value, str) or not (value == "#" or value.startswith("#/")):
                        raise _refuse("a $ref must point inside the schema ('#' or '#/…'); other references "
                                      "are not resolved", at)
                    node.ref = value
                elif key in _UNSUPPORTED_REFS:
                    raise _refuse(f"{key} is not supported; use $ref", at)
                elif key in ("enum", "const"):
                    self._count("enum_values", len(value) if key == "enum" and isinstance(value, list) else 1,
                                at, "enum and const values")
                    _check_depth(value, depth + 1, limits.schema_depth, at)
                elif key in _NESTING_SCHEMA or key in _INLINE_SCHEMA:
                    children.append((value, (*path, key), at, depth + 1))
                    if key in _INLINE_SCHEMA:
                        node.inline.append((*path, key))
                elif key in _NESTING_LISTS or key in _INLINE_LISTS or key == "items":
                    if key == "items" and not isinstance(value, list):
                        children.append((value, (*path, key), at, depth + 1))
                        continue
                    if not isinstance(value, list):
                        _check_depth(value, depth + 1, limits.schema_depth, at)
                        continue
                    if key in _INLINE_LISTS:
                        self._count("branches", len(value), at, "anyOf/oneOf/allOf branches")
                    else:
                        self._count("tuple_items", len(value), at, "prefixItems entries")
                    for index, item in enumerate(value):
                        children.append((item, (*path, key, index), _child(at, index), depth + 2))
                        if key in _INLINE_LISTS:
                            node.inline.append((*path, key, index))
                elif key in _NESTING_MAPS or key in _DEFINITION_MAPS:
                    if not isinstance(value, dict):
                        _check_depth(value, depth + 1, limits.schema_depth, at)
                        continue
                    if key in _NESTING_MAPS:
                        self._count("properties", len(value), at, "properties")
                    for name, item in value.items():
                        if key == "patternProperties":
                            self._regex(name, at)
                        children.append((item, (*path, key, name), _child(at, name), depth + 2))
                elif key == "dependencies" and isinstance(value, dict):
                    self._count("properties", len(value), at, "properties")
                    for name, item in value.items():
                        children.append((item, (*path, key, name), _child(at, name), depth + 2))
                else:
                    _check_depth(value, depth + 1, limits.schema_depth, at)
            if lengths != (None, None):
                self._weigh(("length", *lengths), [bound for bound in lengths if bound is not None],
                            _child(where, "maxLength" if lengths[1] is not None else "minLength"))
            stack.extend(reversed(children))  # walked in document order: the first field at fault is named
        return nodes

    # ---- counters ----------------------------------------------------------------------------

    def _count_bytes(self, size: int, param: str) -> None:
        self.bytes += size
        if self.bytes > self.limits.schema_bytes:
            raise _refuse(f"the request's schemas, patterns, grammars and choices may be at most "
                          f"{self.limits.schema_bytes} bytes together", param)

    def _count(self, counter: str, amount: int, param: str, what: str) -> None:
        total = getattr(self, counter) + amount
        setattr(self, counter, total)
        limit = getattr(self.limits, counter)
        if total > limit:
            raise _refuse(f"a request's schemas may have at most {limit} {what} together (this one has "
                          f"{total} so far)", param)

    def _check_count(self, value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0 \
                or (isinstance(value, float) and not value.is_integer()):
            raise _refuse("must be a non-negative integer", param)
        if value > self.limits.max_count:
            raise _refuse(f"must be at most {self.limits.max_count} (got {value:.0f})", param)

    def _check_number(self, value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse("must be a number", param)
        if not math.isfinite(value) or abs(value) > self.limits.max_number:
            raise _refuse(f"must be a number between -2^63 and 2^63 (got {value:.3g})", param)

    def _weigh(self, key: object, bounds: list[Any], param: str) -> None:
        """Bounded repetitions cost the engine's compiler up to ~256 mask steps each (see above)."""
        if key in self._weighed or not bounds:
            return
        self._weighed.add(key)
        self.repetition += sum(min(int(bound), _REPETITION_STEPS) for bound in bounds)
        if self.repetition > self.limits.repetition_weight:
            raise _refuse(f"the request's bounded repetitions (string length bounds, {{m,n}} quantifiers) weigh "
                          f"{self.repetition}; at most {self.limits.repetition_weight} (each counts its bound, "
                          f"up to {_REPETITION_STEPS}; identical ones once)", param)

    def _check_repetition(self, count: int, param: str) -> None:
        if count > self.limits.max_count:
            raise _refuse(f"a repetition count may be at most {self.limits.max_count} (got {count})", param)


# ---- tool-call arguments ------------------------------------------------------------------------

def check_arguments(arguments: str, param: str, limits: StructuredLimits = LIMITS) -> None:
    """A tool call's ``arguments`` as a conversation replays them: a JSON object, bounded in size and depth.

    An empty string stands for ``{}`` (vLLM reads it so).
    """
    if not arguments:
        return
    size = len(arguments.encode())
    if size > limits.arguments_bytes:
        raise _refuse(f"tool-call arguments may be at most {limits.arguments_bytes} bytes (got {size})", param,
                      "invalid_tool_arguments")
    parsed = _parse_json(arguments, param, limits.arguments_depth, code="invalid_tool_arguments")
    if not isinstance(parsed, dict):
        raise _refuse("tool-call arguments must be a JSON object (a string holding {…})", param,
                      "invalid_tool_arguments")


def arguments_in_bounds(arguments: str, limits: StructuredLimits = LIMITS) -> bool:
    try:
        check_arguments(arguments, "arguments", limits)
    except InvalidRequest:
        return False
    return True


# ---- helpers ------------------------------------------------------------------------------------

def _parse_json(text: str, param: str, depth: int, code: str = "invalid_structured_output") -> Any:
    """JSON text, refused past ``depth`` levels of objects and arrays."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise _refuse(f"not valid JSON: {str(exc)[:200]}", param, code) from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit
        raise _refuse(f"the JSON nests more than {depth} levels deep", param, code) from None
    _check_depth(value, 1, depth, param, code)
    return value


def _check_depth(value: Any, depth: int, limit: int, param: str, code: str = "invalid_structured_output") -> None:
    """A decoded value (arguments; enum, const, default … inside a schema) nests at most ``limit`` levels."""
    level = [value] if isinstance(value, dict | list) else []
    while level:  # one nesting level at a time, containers only
        if depth > limit:
            raise _refuse(f"nests more than {limit} levels deep", param, code)
        following = []
        for item in level:
            following += [child for child in (item.values() if isinstance(item, dict) else item)
                          if isinstance(child, dict | list)]
        level, depth = following, depth + 1


def _walk_json(value: Any, param: str) -> Iterator[tuple[Any, str]]:
    stack = [(value, param)]
    while stack:
        item, where = stack.pop()
        yield item, where
        if isinstance(item, dict):
            stack.extend((child, _child(where, key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, _child(where, index)) for index, child in enumerate(item))


def _pointer(ref: str) -> tuple[str, ...]:
    """``#/a/b~1c/0`` → ("a", "b/c", "0") (RFC 6901, with URI percent-escapes)."""
    from urllib.parse import unquote

    if ref == "#":
        return ()
    return tuple(unquote(part).replace("~1", "/").replace("~0", "~") for part in ref[2:].split("/"))


def _resolve(root: Any, parts: tuple[str, ...]) -> tuple[str | int, ...] | None:
    """The path of the value a pointer names (list indices as ints), or None if there is none."""
    value, path = root, []
    for part in parts:
        if isinstance(value, dict) and part in value:
            value, key = value[part], part
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value, key = value[int(part)], int(part)
        else:
            return None
        path.append(key)
    return tuple(path)


def _check_references(root: dict[str, Any], nodes: dict[tuple[str | int, ...], _Node], param: str) -> None:
    """Every $ref resolves, and no chain of $refs and combinators leads back to where it started without
    nesting a value: such a schema is a grammar rule defined only by itself, which no output satisfies."""
    edges: dict[tuple[str | int, ...], list[tuple[str | int, ...]]] = {}
    for path, node in nodes.items():
        targets = list(node.inline)
        if node.ref is not None:
            target = _resolve(root, _pointer(node.ref))
            if target is None:
                raise _refuse(f"$ref {node.ref[:100]!r} points to nothing in this schema", _child(node.param, "$ref"))
            targets.append(target)
        edges[path] = targets
    # Iterative depth-first search for a cycle among those edges (white/grey/black).
    state: dict[tuple[str | int, ...], int] = {}
    for start in edges:
        if state.get(start):
            continue
        state[start] = 1
        stack = [(start, iter(edges[start]))]
        while stack:
            path, pending = stack[-1]
            following = next(pending, None)
            if following is None:
                state[path] = 2
                stack.pop()
            elif state.get(following) == 1:
                where = nodes[path].param if path in nodes else param
                raise _refuse("recursive $ref: this schema refers back to itself without nesting a value "
                              "(recursion must go through properties, items or the like)",
                              _child(where, "$ref") if nodes.get(path) and nodes[path].ref else where,
                              "recursive_schema")
            elif not state.get(following):
                state[following] = 1
                stack.append((following, iter(edges.get(following, ()))))


# {m}, {m,}, {m,n} outside character classes and escapes.
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _regex_repetitions(pattern: str) -> Iterator[int]:
    """The counts of every ``{m,n}`` quantifier in a regex (escapes and character classes skipped)."""
    index, length = 0, len(pattern)
    while index < length:
        char = pattern[index]
        if char == "\\":
            # \p{L}, \u{…}, \x{…}: braces that are not a quantifier
            if index + 2 < length and pattern[index + 1] in "pPuxk" and pattern[index + 2] == "{":
                end = pattern.find("}", index + 2)
                index = length if end < 0 else end + 1
            else:
                index += 2
            continue
        if char == "[":
            index += 1
            if index < length and pattern[index] == "^":
                index += 1
            if index < length and pattern[index] == "]":
                index += 1
            while index < length and pattern[index] != "]":
                index += 2 if pattern[index] == "\\" else 1
            index += 1
            continue
        if char == "{":
            match = _QUANTIFIER.match(pattern, index)
            if match:
                yield from (int(number) for number in match.groups() if number)
                index = match.end()
                continue
        index += 1


# A grammar's repetitions: EBNF's {m,n} and Lark's ``~ m`` / ``~ m..n`` (inside strings too: conservative).
_GRAMMAR_REPETITION = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}|~\s*(\d+)(?:\s*\.\.\s*(\d+))?")
