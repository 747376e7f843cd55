"""Kerchunk version 1 templates: jinja-style ``{{...}}`` strings, evaluated vectorised over ``gen`` ranges.

Expressions made of names, numbers, strings, arithmetic and ``%``
formatting are evaluated here; anything beyond that is rendered with jinja2
(sandboxed) if it is installed.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vzdask.parsers.common import ParseError
from vzdask.parsers.kerchunk.common import STRING

_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SINGLE_EXPRESSION = re.compile(r"^\{\{(.*?)\}\}$", re.DOTALL)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


class _Unsupported(Exception):
    """An expression beyond the small language evaluated here."""


class _Templates:
    """Render jinja-style strings: ``{{name}}``, ``{{f(c='x')}}``, ``{{(i + 1) * 1000}}``.

    Evaluation is vectorised over the ``gen`` dimensions (numpy arrays);
    template values are plain strings, templates containing ``{{`` are
    functions of their keyword arguments (as in fsspec).
    """

    def __init__(self, templates: dict[str, Any], source: str) -> None:
        self.source = source
        self.values: dict[str, str] = {}
        self.functions: dict[str, str] = {}
        for name, text in templates.items():
            if not isinstance(text, str):
                raise ParseError(f"{source}: template {name!r} is a {type(text).__name__}, not a string")
            (self.functions if "{{" in text else self.values)[name] = text
        self._cache: dict[str, str] = {}

    # -- urls of refs -------------------------------------------------------
    def render_url(self, url: str) -> str:
        if "{{" not in url:
            return url
        hit = self._cache.get(url)
        if hit is None:
            hit = self._cache[url] = str(self.render(url, {}, f"{self.source}: url {url!r}"))
        return hit

    # -- gen ---------------------------------------------------------------
    def expand_gen(self, entry: Any, where: str) -> dict[str, list]:
        if not isinstance(entry, dict) or not {"key", "url", "dimensions"} <= entry.keys():
            raise ParseError(f"{where}: a gen entry needs 'key', 'url' and 'dimensions'")
        dimensions = entry["dimensions"]
        if not isinstance(dimensions, dict) or not dimensions:
            raise ParseError(f"{where}: 'dimensions' must be a non-empty object")
        axes = {}
        for name, spec in dimensions.items():
            try:
                if isinstance(spec, list):
                    if not all(type(v) is int for v in spec):
                        raise TypeError("values must be integers")
                    axes[name] = np.asarray(spec, dtype=np.int64)
                elif isinstance(spec, dict):
                    axes[name] = np.arange(int(spec.get("start", 0)), int(spec["stop"]), int(spec.get("step", 1)))
                else:
                    raise TypeError("give {'start', 'stop', 'step'} or a list of integers")
            except (KeyError, TypeError, ValueError) as err:
                raise ParseError(f"{where}: dimension {name!r}: {err}") from None
        grids = np.meshgrid(*axes.values(), indexing="ij") if axes else []
        env = {name: grid.ravel() for name, grid in zip(axes, grids)}
        n = math.prod(len(a) for a in axes.values())
        if n == 0:
            return {}
        keys = self._strings(entry["key"], env, n, f"{where} key")
        urls = self._strings(entry["url"], env, n, f"{where} url")
        if ("offset" in entry) != ("length" in entry):
            raise ParseError(f"{where}: give both 'offset' and 'length', or neither (whole files)")
        if "offset" not in entry:
            return {k: [u] for k, u in zip(keys.tolist(), urls.tolist())}
        offsets = self._integers(entry["offset"], env, n, f"{where} offset").tolist()
        lengths = self._integers(entry["length"], env, n, f"{where} length").tolist()
        return {k: [u, o, ln] for k, u, o, ln in zip(keys.tolist(), urls.tolist(), offsets, lengths)}

    def _strings(self, text: Any, env, n: int, where: str) -> np.ndarray:
        if not isinstance(text, str):
            raise ParseError(f"{where}: {text!r} is not a string")
        return np.broadcast_to(np.asarray(self.render(text, env, where), dtype=STRING), (n,))

    def _integers(self, text: Any, env, n: int, where: str) -> np.ndarray:
        if type(text) is int:
            return np.full(n, text, dtype=np.int64)
        if not isinstance(text, str):
            raise ParseError(f"{where}: {text!r} is neither an integer nor a template string")
        single = _SINGLE_EXPRESSION.match(text.strip())
        value: Any = None
        if single and "{{" not in single.group(1):
            try:
                value = self._evaluate(single.group(1), env, where)
            except _Unsupported:
                value = None
        if value is None or (isinstance(value, np.ndarray) and value.dtype.kind not in "iu") or isinstance(value, str):
            value = self.render(text, env, where)
        try:
            if isinstance(value, np.ndarray):
                out = value.astype(np.int64) if value.dtype.kind in "iu" else np.asarray(value, dtype=STRING).astype(np.int64)
            elif isinstance(value, str):
                out = np.int64(int(value))
            elif type(value) is int:
                out = np.int64(value)
            else:
                raise ValueError(f"{value!r} is not an integer")
        except (ValueError, OverflowError) as err:
            raise ParseError(f"{where}: {text!r} does not render to integers ({err})") from None
        return np.broadcast_to(out, (n,))

    # -- rendering ---------------------------------------------------------
    def render(self, text: str, env: Mapping[str, Any], where: str) -> Any:
        """``text`` with every ``{{expression}}`` replaced: a str, or a string array over ``env``'s arrays."""
        pieces: list[Any] = []
        position = 0
        try:
            for match in _EXPRESSION.finditer(text):
                pieces.append(text[position:match.start()])
                pieces.append(self._evaluate(match.group(1), env, where))
                position = match.end()
        except _Unsupported:
            return self._render_jinja(text, env, where)
        pieces.append(text[position:])
        if not any(isinstance(p, np.ndarray) for p in pieces):
            return "".join(_as_text(p) for p in pieces)
        out = None
        for piece in pieces:
            if isinstance(piece, str) and not piece:
                continue
            strings = piece.astype(STRING) if isinstance(piece, np.ndarray) else np.asarray(_as_text(piece), dtype=STRING)
            out = strings if out is None else np.strings.add(out, strings)
        return out

    def _evaluate(self, expression: str, env: Mapping[str, Any], where: str) -> Any:
        try:
            tree = ast.parse(expression.strip(), mode="eval")
        except SyntaxError:
            raise _Unsupported from None
        try:
            return self._node(tree.body, env, where)
        except (TypeError, ZeroDivisionError, ValueError) as err:
            raise ParseError(f"{where}: cannot evaluate {{{{{expression}}}}}: {err}") from None

    def _node(self, node: ast.AST, env: Mapping[str, Any], where: str) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id in self.values:
                return self.values[node.id]
            if node.id in self.functions:
                raise ParseError(f"{where}: template {node.id!r} takes arguments: call it as {node.id}(name=value)")
            raise ParseError(f"{where}: undefined template variable {node.id!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._node(node.left, env, where), self._node(node.right, env, where)
            if isinstance(node.op, ast.Pow) and np.any(np.abs(np.asarray(right, dtype=object)) > 64):
                raise ValueError("exponent beyond 64")
            return _binary(type(node.op), left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self._node(node.operand, env, where)
            if _is_text(value):
                raise TypeError("unary sign on a string")
            return -value if isinstance(node.op, ast.USub) else +value
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.functions
            and not node.args and all(k.arg for k in node.keywords)
        ):
            kwargs = {k.arg: self._node(k.value, env, where) for k in node.keywords}
            return self.render(self.functions[node.func.id], kwargs, where)
        raise _Unsupported

    def _render_jinja(self, text: str, env: Mapping[str, Any], where: str) -> Any:
        try:
            import jinja2
        except ImportError:
            raise ParseError(
                f"{where}: template {text!r} uses more than names, arithmetic and template calls; "
                "install jinja2 to render it"
            ) from None
        from jinja2.sandbox import SandboxedEnvironment

        environment = SandboxedEnvironment()  # reference sets come from anywhere: no code execution
        functions = {
            name: (lambda _body=body, **kw: environment.from_string(_body).render(**kw))
            for name, body in self.functions.items()
        }
        try:
            template = environment.from_string(text)
            arrays = {k: v for k, v in env.items() if isinstance(v, np.ndarray)}
            scalars = {k: v for k, v in env.items() if not isinstance(v, np.ndarray)}
            base = {**self.values, **functions, **scalars}
            if not arrays:
                return template.render(**base)
            n = len(next(iter(arrays.values())))
            columns = {k: v.tolist() for k, v in arrays.items()}
            out = [template.render(**base, **{k: c[i] for k, c in columns.items()}) for i in range(n)]
        except jinja2.TemplateError as err:
            raise ParseError(f"{where}: cannot render template {text!r}: {err}") from None
        return np.asarray(out, dtype=STRING)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, np.ndarray) and value.dtype.kind in "UTSO")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _binary(op: type, left: Any, right: Any) -> Any:
    if op is ast.Add and (_is_text(left) or _is_text(right)):
        if not (_is_text(left) and _is_text(right)):
            raise TypeError("cannot add a string and a number")
        if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
            return np.strings.add(np.asarray(left, dtype=STRING), np.asarray(right, dtype=STRING))
        return left + right
    if op is ast.Mod and _is_text(left):
        if isinstance(left, str) and isinstance(right, np.ndarray):
            return np.char.mod(left, right).astype(STRING)
        if isinstance(left, np.ndarray):
            raise TypeError("'%' formatting with a string array on the left")
        return left % right
    if _is_text(left) or _is_text(right):
        raise TypeError(f"unsupported operation on a string ({op.__name__})")
    return _BINARY[op](left, right)
