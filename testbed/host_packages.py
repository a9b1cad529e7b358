"""Debian packages the test bed runs (buildah, mmdebstrap, gcc, containerd, runc, ...).

A fresh machine of this kind has none of them; `ensure_debian_packages` installs what
is missing with apt-get, and on a warm machine it is one dpkg-query.
"""

from __future__ import annotations

import os
import subprocess

_apt_updated = False


def missing_debian_packages(*names: str) -> list[str]:
    """The names of `names` that dpkg does not report as installed."""
    missing = []
    for name in names:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True
        )
        if status.returncode != 0 or not status.stdout.endswith(" installed"):
            missing.append(name)
    return missing


def ensure_debian_packages(*names: str) -> None:
    """Install whichever of the Debian packages `names` are missing (apt-get, as root)."""
    global _apt_updated
    missing = missing_debian_packages(*names)
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[host-packages] installing {' '.join(missing)} with apt-get", flush=True)
    if not _apt_updated:  # the package lists of a fresh machine may be missing or stale
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
        _apt_updated = True
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", *missing], check=True, env=env)
