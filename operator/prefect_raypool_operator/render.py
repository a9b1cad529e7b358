"""`raypool render pool.yaml`: print the manifests a PrefectRayPool produces, offline.

The same checks the API server (CRD schema, CEL) and the operator (refusals.py) make,
so a file that renders cleanly here is one the cluster accepts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from prefect_raypool_operator.builders import Manifest, build_manifests
from prefect_raypool_operator.refusals import Problem, Refused, parse_pool, spec_problems


def render_documents(docs: list[Any]) -> Iterator[Manifest]:
    for doc in docs:
        if not doc:
            continue
        name, namespace, spec = parse_pool(doc)
        problems = spec_problems(spec, name)
        if problems:
            message = "; ".join(p.message for p in problems)
            raise Refused(Problem(problems[0].reason, message, problems[0].permanent))
        yield from build_manifests(name, namespace, spec)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the entrypoint scripts) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def dump_yaml(manifests: list[Manifest]) -> str:
    return yaml.dump_all(manifests, Dumper=_BlockDumper, sort_keys=False, width=100)


def render_text(text: str) -> str:
    return dump_yaml(list(render_documents(list(yaml.safe_load_all(text)))))


def render_cli(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else open(args.file).read()
    try:
        sys.stdout.write(render_text(text))
    except Refused as exc:
        print(f"raypool render: {args.file}: {exc}", file=sys.stderr)
        return 2
    return 0
