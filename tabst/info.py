"""Self-description of a store, as data and as a rich tree."""
from __future__ import annotations

import json

from .store import open_store, walk

_LONG = 160


def store_info(path) -> dict:
    f = open_store(path)
    try:
        items = walk(f)
    finally:
        f.close()
    return {"store": str(path), "items": items}


def _fmt(v) -> str:
    if isinstance(v, str) and v[:1] in "{[":
        try:
            v = json.dumps(json.loads(v), separators=(", ", ": "))
        except ValueError:
            pass
    s = str(v)
    return s if len(s) <= _LONG else s[:_LONG] + f"... ({len(s)} chars)"


def render_info(data: dict, console) -> None:
    from rich.markup import escape
    from rich.tree import Tree

    root = Tree(f"[bold]{data['store']}[/]")
    nodes = {"/": root}
    for it in data["items"]:
        path = it["path"]
        attrs = dict(it["attrs"])
        desc = attrs.pop("description", "")
        if path == "/":
            node = root
        else:
            parent = nodes[path.rsplit("/", 1)[0] or "/"]
            name = path.rsplit("/", 1)[1]
            if it["kind"] == "dataset":
                unit = attrs.pop("unit", None)
                label = (f"[cyan]{name}[/] [green]{it['dtype']}{tuple(it['shape'])}[/]"
                         f" chunks={tuple(it['chunks']) if it['chunks'] else None}"
                         + (f" unit={unit}" if unit else ""))
            else:
                label = f"[bold blue]{name}/[/]"
            node = parent.add(label + (f" — {escape(str(desc))}" if desc else ""))
            nodes[path] = node
        for k, v in attrs.items():
            node.add(f"[dim]@{escape(k)}[/] = {escape(_fmt(v))}")
    console.print(root)
