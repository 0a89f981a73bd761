"""Change values in a YAML file's text and keep everything else: comments, key order, quoting, characters.

PyYAML's composer gives every scalar's position in the text; :func:`set_values` replaces just those spans
(and inserts missing keys as new lines at the mapping's indentation), so a profile written by
``scripts/calibrate.py`` keeps its comments. ruamel.yaml would do this too but is not a dependency.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

Path_ = tuple  # a key path: str keys for mappings, int indices for sequences

_PLAIN = re.compile(r"^[A-Za-z_][\w.\-]*$")


def format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    s = str(value)
    if _PLAIN.match(s) and s.lower() not in ("true", "false", "yes", "no", "on", "off", "null", "none"):
        return s
    return json.dumps(s, ensure_ascii=False)


def _get(mapping: yaml.MappingNode, key: str):
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _line_end(text: str, index: int) -> int:
    """Index of the end of the line holding ``index`` (where a new line can be inserted)."""
    if index > 0 and text[index - 1] == "\n":  # a block node's end mark sits at the next line's start
        return index - 1
    j = text.find("\n", index)
    return len(text) if j < 0 else j


def _last_end(node) -> int:
    """End index of the last scalar inside ``node`` (block nodes end at the next line otherwise)."""
    if isinstance(node, yaml.MappingNode) and node.value and not node.flow_style:
        return _last_end(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and node.value and not node.flow_style:
        return _last_end(node.value[-1])
    return node.end_mark.index


def _block(key: str, rest: Path_, value: Any, indent: int) -> str:
    pad = " " * indent
    if not rest:
        return f"{pad}{key}: {format_scalar(value)}"
    if isinstance(rest[0], int):
        raise KeyError(f"cannot create list {key!r}")
    return f"{pad}{key}:\n" + _block(rest[0], rest[1:], value, indent + 2)


def set_values(text: str, updates: list[tuple[Path_, Any]]) -> str:
    """Return ``text`` with each ``(path, value)`` set; missing mapping keys are added."""
    edits: list[tuple[int, int, int, str]] = []  # start, end, -indent, text
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("the YAML document must be a mapping")
    for path, value in updates:
        node = root
        for depth, step in enumerate(path):
            if isinstance(step, int):
                if not isinstance(node, yaml.SequenceNode) or step >= len(node.value):
                    raise KeyError(f"{path}: no item {step}")
                node = node.value[step]
                continue
            if not isinstance(node, yaml.MappingNode):
                raise KeyError(f"{path}: {step!r} is not under a mapping")
            child = _get(node, step)
            if child is None:
                rest = path[depth + 1:]
                if node.flow_style:
                    raise KeyError(f"{path}: cannot add a key to a flow mapping {{...}}")
                indent = node.value[0][0].start_mark.column if node.value else 0
                at = _line_end(text, _last_end(node)) if node.value else len(text)
                edits.append((at, at, -indent, "\n" + _block(step, rest, value, indent)))
                break
            node = child
        else:
            if not isinstance(node, yaml.ScalarNode):
                raise KeyError(f"{path}: not a scalar")
            edits.append((node.start_mark.index, node.end_mark.index, 0, format_scalar(value)))
    # from the end backwards; of insertions at one place the outer one first, so the inner one ends up above it
    for start, end, _, new in sorted(edits, key=lambda e: (e[0], e[1], e[2]), reverse=True):
        text = text[:start] + new + text[end:]
    return text
