"""`raypool render pool.yaml`: print the manifests a PrefectRayPool produces, offline.

The same checks the API server (CRD schema, CEL) and the operator (preflight) make,
so a file that renders cleanly here is one the cluster accepts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import pydantic
import yaml

from prefect_raypool_operator import spec
from prefect_raypool_operator.builders import Manifest, build_manifests
from prefect_raypool_operator.preflight import spec_problems


class PoolFileError(ValueError):
    """A pool document that the cluster would reject; the message names the field."""


def parse_pool(doc: dict[str, Any]) -> tuple[str, str, spec.PrefectRayPoolSpec]:
    """(name, namespace, spec) of one PrefectRayPool document, or PoolFileError."""
    if doc.get("kind") != spec.KIND or doc.get("apiVersion") != f"{spec.GROUP}/{spec.VERSION}":
        raise PoolFileError(
            f"not a PrefectRayPool: expected apiVersion {spec.GROUP}/{spec.VERSION} "
            f"and kind {spec.KIND}"
        )
    meta = doc.get("metadata") or {}
    name = str(meta.get("name", ""))
    problem = spec.name_problem(name)
    if problem:
        raise PoolFileError(f"metadata.name {name!r}: {problem}")
    try:
        pool = spec.PrefectRayPoolSpec.model_validate(doc.get("spec") or {})
    except pydantic.ValidationError as exc:
        raise PoolFileError(format_validation_error(exc)) from None
    return name, str(meta.get("namespace") or "default"), pool


def format_validation_error(exc: pydantic.ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(["spec", *(str(p) for p in err["loc"])])
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def render_documents(docs: list[Any]) -> Iterator[Manifest]:
    for doc in docs:
        if not doc:
            continue
        name, namespace, pool = parse_pool(doc)
        problems = spec_problems(pool)
        if problems:
            raise PoolFileError("; ".join(p.message for p in problems))
        yield from build_manifests(name, namespace, pool)


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
    except PoolFileError as exc:
        print(f"raypool render: {args.file}: {exc}", file=sys.stderr)
        return 2
    return 0
