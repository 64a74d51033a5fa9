"""Writes the option tables of ``docs/configuration.md`` from the config models.

``python -m sidecar.configdoc`` rewrites the part of the file between the
``BEGIN GENERATED`` / ``END GENERATED`` markers; a test fails when it is stale,
so every option in ``sidecar/config.py`` is documented with its type, default
and description.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sidecar.config import ModelConfig, ServerConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: python -m sidecar.configdoc -->"
END = "<!-- END GENERATED -->"


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _submodel(tp: Any) -> type[BaseModel] | None:
    if _is_model(tp):
        return typing.cast(type[BaseModel], tp)
    if typing.get_origin(tp) is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) == 1 and _is_model(args[0]):
            return typing.cast(type[BaseModel], args[0])
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and _is_model(inner[0]):
            return typing.cast(type[BaseModel], inner[0])
    return None


def _type_name(tp: Any) -> str:
    text = repr(tp) if not isinstance(tp, type) else tp.__name__
    for noise in ("typing.", "pathlib.", "sidecar.config."):
        text = text.replace(noise, "")
    return text.replace("|", "\\|")


def _rows(model: type[BaseModel], prefix: str, out: list[tuple[str, list[str]]]) -> None:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        sub = _submodel(field.annotation)
        if sub is not None:
            many = typing.get_origin(field.annotation) is tuple
            nested.append((f"{prefix}{key}{'[]' if many else ''}", sub))
            continue
        default = field.default
        if isinstance(default, tuple):
            default = list(default)
        doc = field.description or ""
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | `{default!r}` | {doc} |")
    title = prefix.rstrip(".") or "(top level)"
    doc = (model.__doc__ or "").strip().splitlines()[0]
    if rows:
        table = [f"`{title}`: {doc}", "", "| key | type | default | description |"]
        table += ["|---|---|---|---|", *rows]
        out.append((title, table))
    for path, sub in nested:
        _rows(sub, f"{path}.", out)


def render() -> str:
    """The generated Markdown: one table per section of each config file."""
    parts: list[str] = [BEGIN, ""]
    for heading, root in (("sidecar.yaml", ServerConfig), ("config.yaml", ModelConfig)):
        parts += [f"### {heading}", ""]
        sections: list[tuple[str, list[str]]] = []
        _rows(root, "", sections)
        for _, table in sections:
            parts += [*table, ""]
    parts.append(END)
    return "\n".join(parts)


def updated(text: str) -> str:
    """``text`` with the generated block replaced."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render() + text[end:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the doc, or with ``--check`` exit 1 when it is stale."""
    argv = sys.argv[1:] if argv is None else argv
    text = DOC.read_text()
    fresh = updated(text)
    if "--check" in argv:
        if fresh != text:
            print(f"{DOC} is stale: run python -m sidecar.configdoc", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
