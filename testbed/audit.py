"""Reading the API server's audit log (ControlPlane(audit_log=...)): one client's requests.

Each request is logged when it arrives (stage RequestReceived) and when it completes
(a watch: when it ends); counting the arrivals counts requests, watches included.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    time: str  # requestReceivedTimestamp, RFC 3339 with microseconds
    verb: str  # get, list, watch, create, patch, update, delete...
    resource: str  # plural, "" for non-resource URLs
    subresource: str
    namespace: str
    name: str
    uri: str

    @property
    def label_selector(self) -> str:
        return parse_qs(urlsplit(self.uri).query).get("labelSelector", [""])[0]

    @property
    def kind(self) -> str:
        """resource/subresource, e.g. `prefectraypools/status`."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def requests(log: Path, user: str, offset: int = 0) -> tuple[list[Request], int]:
    """`user`'s requests logged from byte `offset` on, and the offset to read on from."""
    found = []
    with log.open("rb") as f:
        f.seek(offset)
        data = f.read()
    whole = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
    for line in whole.splitlines():
        event: dict[str, Any] = json.loads(line)
        if event.get("stage") != "RequestReceived" or event["user"]["username"] != user:
            continue
        ref = event.get("objectRef") or {}
        found.append(
            Request(
                event["requestReceivedTimestamp"],
                event["verb"],
                ref.get("resource", ""),
                ref.get("subresource", ""),
                ref.get("namespace", ""),
                ref.get("name", ""),
                event["requestURI"],
            )
        )
    return found, offset + len(whole)


def by_verb_and_kind(found: list[Request]) -> Counter[str]:
    return Counter(f"{r.verb} {r.kind or r.uri}" for r in found)
