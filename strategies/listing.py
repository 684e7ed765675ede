"""``steadyhand strategies [--json]``: the shipped strategies, each with its parameters and defaults."""

from __future__ import annotations

import argparse
import inspect
import json

from steadyhand.strategies.loader import SHIPPED, parameters, resolve_class


def describe() -> list[dict]:
    """One entry per shipped strategy: short name, class, id, summary, parameters."""
    out = []
    for short, spec in SHIPPED.items():
        cls = resolve_class(spec)
        doc = inspect.getdoc(cls) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ")
        out.append({"name": short, "class": spec, "id": cls.strategy_id(), "summary": summary,
                    "params": parameters(cls)})
    return out


def cmd_strategies(args: argparse.Namespace) -> int:
    entries = describe()
    if args.json:
        print(json.dumps({"strategies": entries}, default=str))
        return 0
    for entry in entries:
        print(f"{entry['name']:<10} {entry['class']}  (order ids {entry['id']}-...)")
        print(f"    {entry['summary']}")
        for p in entry["params"]:
            default = "required" if p["required"] else f"default {p['default']!r}"
            print(f"    {p['name']:<14} {p['type']:<24} {default}")
    print('Use one with [strategy] class = "NAME" and [strategy.params]; or your own: class = "file.py:ClassName".')
    return 0
