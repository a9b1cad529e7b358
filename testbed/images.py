"""The images the pods of a PrefectRayPool run, built here: no Docker engine, no registry.

buildah (daemonless, `--isolation chroot`) builds the project's own Dockerfiles. Where
they say FROM a registry image, a stand-in built here takes its place through their
BASE build argument (images/testbed/):

  raypool-python-base                stands in for python:3.11-slim: Debian bookworm
                                     (Python 3.11, from mmdebstrap) and a venv on PATH
  raypool-ray-base                   stands in for rayproject/ray:<ray>-py311: that plus
                                     Ray's wheels, owned by the user ray (uid 1000)
  prefect-raypool-operator:<v>       Dockerfile, FROM the python stand-in
  prefect-raypool-ray:<v>            images/ray/Dockerfile, FROM the ray stand-in
  prefect-raypool-example-flows:<v>  examples/flows/Dockerfile, FROM prefect-raypool-ray
  localhost/raypool-pause:3.10       the pod sandbox image, from the Kubernetes module's pause.c

Build steps do not get the host's pip configuration (its index and the CA it needs), so
the host's pip downloads every wheel, for the image's Python, into a wheelhouse that the
builds mount at /wheels and install from with --no-index.

Each image is cached as an OCI archive under ~/.cache/prefect-raypool/images/, named by
a hash of all that goes into it (Dockerfile, sources, base, versions): a warm run is a
few hash checks. A node loads the archives with `import_into_containerd`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect_raypool_operator import naming
from testbed import REPO
from testbed.binaries import VERSIONS, cache_dir
from testbed.host_packages import ensure_debian_packages

PROJECT_VERSION: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The images hold the Ray and Prefect the tests run with (those of the dev venv).
RAY_VERSION = importlib.metadata.version("ray")
PREFECT_VERSION = importlib.metadata.version("prefect")

# The names pods use, the one place that spells them.
OPERATOR_IMAGE = f"prefect-raypool-operator:{PROJECT_VERSION}"
RAY_IMAGE = naming.DEFAULT_IMAGE  # the operator names the pools' default image
FLOWS_IMAGE = f"prefect-raypool-example-flows:{PROJECT_VERSION}"
PAUSE_IMAGE = "localhost/raypool-pause:3.10"
IMAGE_NAMES = {
    "operator": OPERATOR_IMAGE,
    "ray": RAY_IMAGE,
    "flows": FLOWS_IMAGE,
    "pause": PAUSE_IMAGE,
}

DEBIAN_SUITE = "bookworm"  # its Python is 3.11, the project's
DEBIAN_PACKAGES = ("python3", "python3-venv", "wget", "ca-certificates")
# No documentation, manual pages or translations in the images.
DEBIAN_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*")
HOST_PACKAGES = ("buildah", "mmdebstrap", "gcc", "libc6-dev")

# What the operator and ray images install from the checkout (their COPY lines).
PROJECT_SOURCES = ("pyproject.toml", "README.md", "runner", "kuberay", "operator", ".dockerignore")
STAND_INS = REPO / "images" / "testbed"


@dataclass(frozen=True)
class Image:
    ref: str  # the name pods use
    key: str  # hash of everything that goes into it

    @property
    def repo(self) -> str:
        return self.ref.rsplit(":", 1)[0].rsplit("/", 1)[-1]

    @property
    def local(self) -> str:
        """Its name in buildah's storage: one tag per content, so never a stale one."""
        return f"localhost/{self.repo}:{self.key}"

    @property
    def archive(self) -> Path:
        return images_dir() / f"{self.repo}-{self.key}.oci.tar"


def images_dir() -> Path:
    return cache_dir() / "images"


def full_name(ref: str) -> str:
    """The name containerd's CRI looks `ref` up by (`x:1` is docker.io/library/x:1)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"


# --- the API -------------------------------------------------------------------------


def ensure_images() -> dict[str, Path]:
    """Pod image name -> its OCI archive, for all of IMAGE_NAMES; builds what is missing."""
    return {ref: image.archive for ref, image in build_images().items()}


def pause_image() -> Path:
    """The OCI archive of PAUSE_IMAGE (CRI's sandbox_image), built if missing."""
    ensure_debian_packages(*HOST_PACKAGES)
    return _pause().archive


def image_ref(role: str) -> str:
    """The name pods use for an image: "operator", "ray", "flows" or "pause"."""
    return IMAGE_NAMES[role]


def import_into_containerd(
    archives: Mapping[str, Path] | Iterable[Path], address: Path | str
) -> None:
    """Load OCI archives (or ensure_images()'s mapping) into the containerd at socket
    `address`, in its k8s.io namespace where CRI finds them by the names pods use.

    An image containerd already holds under its name and digest is skipped, so a node
    that keeps its containerd root starts in seconds.
    """
    ctr = ["ctr", "--address", str(address), "-n", "k8s.io", "images"]
    listed = subprocess.run([*ctr, "ls"], check=True, capture_output=True, text=True).stdout
    held = {tuple(line.split()[0:3:2]) for line in listed.splitlines()[1:]}  # (name, digest)
    paths = archives.values() if isinstance(archives, Mapping) else archives
    for archive in paths:
        if _archive_target(archive) in held:
            continue
        with _step(f"importing {archive.name} into containerd"):
            subprocess.run([*ctr, "import", str(archive)], check=True, stdout=subprocess.DEVNULL)


def _archive_target(archive: Path) -> tuple[str, str]:
    """The name and manifest digest that an archive of ours holds."""
    with tarfile.open(archive) as tar:
        index = tar.extractfile("index.json")
        assert index is not None
        (manifest,) = json.load(index)["manifests"]
    return manifest["annotations"]["org.opencontainers.image.ref.name"], manifest["digest"]


def build_images() -> dict[str, Image]:
    """Pod image name -> Image, for all of IMAGE_NAMES; builds what is missing."""
    started = time.monotonic()
    ensure_debian_packages(*HOST_PACKAGES)
    images_dir().mkdir(parents=True, exist_ok=True)
    python_base = _python_base()
    wheels = _wheelhouse(python_base)
    ray_base = _ray_base(python_base, wheels)
    operator = _project_image(OPERATOR_IMAGE, REPO / "Dockerfile", python_base, wheels)
    ray = _project_image(RAY_IMAGE, REPO / "images" / "ray" / "Dockerfile", ray_base, wheels)
    flows = _flows(ray)
    pause = _pause()
    _tidy([flows, ray, operator, ray_base, python_base, pause], wheels)
    _log(f"images ready in {time.monotonic() - started:.0f}s")
    return {image.ref: image for image in (operator, ray, flows, pause)}


def run_in_image(image: Image, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in a throwaway container of `image` (output captured, no check)."""
    with _container(image) as name:
        opts = ["--user", user] if user else []
        return subprocess.run(
            ["buildah", *_storage(), "run", "--isolation", "chroot", *opts, name, "--", *cmd],
            capture_output=True,
            text=True,
        )


@contextmanager
def mounted(image: Image) -> Iterator[Path]:
    """The root filesystem of a throwaway container of `image`, mounted on the host."""
    with _container(image) as name:
        yield Path(_buildah("mount", name).strip())


# --- the images ------------------------------------------------------------------------


def _python_base() -> Image:
    dockerfile = STAND_INS / "python.Dockerfile"
    debian = (DEBIAN_SUITE, *DEBIAN_PACKAGES, *DEBIAN_EXCLUDES)
    image = Image("localhost/raypool-python-base:latest", _digest(dockerfile, *debian))
    if not image.archive.exists():
        with tempfile.TemporaryDirectory(dir=images_dir()) as context:
            _debian_rootfs(Path(context) / "rootfs.tar")
            _bud(image, dockerfile, Path(context))
    return image


def _ray_base(python_base: Image, wheels: Path) -> Image:
    dockerfile = STAND_INS / "ray.Dockerfile"
    image = Image(
        "localhost/raypool-ray-base:latest", _digest(dockerfile, python_base.key, wheels.name)
    )
    if not image.archive.exists():
        _bud(image, dockerfile, STAND_INS, python_base, {"RAY_VERSION": RAY_VERSION}, wheels)
    return image


def _project_image(ref: str, dockerfile: Path, base: Image, wheels: Path) -> Image:
    sources = [REPO / path for path in PROJECT_SOURCES]
    image = Image(ref, _digest(dockerfile, base.key, wheels.name, *sources))
    if not image.archive.exists():
        _bud(image, dockerfile, REPO, base, {}, wheels)
    return image


def _flows(ray: Image) -> Image:
    dockerfile = REPO / "examples" / "flows" / "Dockerfile"
    inputs = (
        REPO / "examples" / "flows",
        REPO / "examples" / "count_to.py",
        REPO / ".dockerignore",
    )
    image = Image(FLOWS_IMAGE, _digest(dockerfile, ray.key, *inputs))
    if not image.archive.exists():
        _bud(image, dockerfile, REPO, ray)
    return image


def _pause() -> Image:
    source = _kubernetes_module() / "build" / "pause" / "linux" / "pause.c"
    dockerfile = REPO / "images" / "pause" / "Dockerfile"
    image = Image(PAUSE_IMAGE, _digest(dockerfile, source))
    if not image.archive.exists():
        images_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=images_dir()) as context:
            # Static, as Kubernetes builds it: the image is FROM scratch.
            cmd = ["gcc", "-static", "-O2", "-s", "-o", f"{context}/pause", str(source)]
            subprocess.run(cmd, check=True)
            _bud(image, dockerfile, Path(context))
    return image


def _kubernetes_module() -> Path:
    """The source of k8s.io/kubernetes at the test bed's version (the Go module cache)."""
    module = f"k8s.io/kubernetes@{VERSIONS['K8S_VERSION']}"
    with tempfile.TemporaryDirectory() as outside_any_module:
        out = subprocess.run(
            ["go", "mod", "download", "-json", module],
            cwd=outside_any_module,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return Path(json.loads(out)["Dir"])


# --- the stand-in base's ingredients ----------------------------------------------------


def _debian_rootfs(tar: Path) -> None:
    excludes = [f"--dpkgopt=path-exclude={pattern}" for pattern in DEBIAN_EXCLUDES]
    # Licences stay: /usr/share/doc/*/copyright.
    excludes.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    cmd = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}"]
    with _step(f"Debian {DEBIAN_SUITE} root filesystem (mmdebstrap, about a minute)"):
        subprocess.run([*cmd, *excludes, DEBIAN_SUITE, str(tar)], check=True)


# Runs the host's pip as if it were the image's Python, for environment markers: the
# image's Python (3.11.2, Debian's) needs wheels the host's may not, such as
# async-timeout (`python_full_version < "3.11.3"`), and `--python-version` does not
# change how pip evaluates markers.
_PIP_WITH_MARKERS = """
import json, runpy, sys
from pip._vendor.packaging import markers
environment = json.loads(open(sys.argv.pop(1)).read())
markers.default_environment = lambda: dict(environment)
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""
_MARKER_ENVIRONMENT = (
    "import json; from pip._vendor.packaging.markers import default_environment as d; "
    "print(json.dumps(d()))"
)


def _wheelhouse(python_base: Image) -> Path:
    """Every wheel the images install (Ray, Prefect, the project's dependencies)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["operator"],
        *project["build-system"]["requires"],  # the images build the project offline
    ]
    pins = [f"ray=={RAY_VERSION}", f"prefect=={PREFECT_VERSION}"]
    dest = images_dir() / f"wheels-{_digest(python_base.key, *requirements, *pins)}"
    if dest.is_dir():
        return dest
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        environment = run_in_image(python_base, "python", "-c", _MARKER_ENVIRONMENT)
        (Path(tmp) / "markers.json").write_text(environment.stdout)
        (Path(tmp) / "pins.txt").write_text("\n".join(pins) + "\n")
        python = json.loads(environment.stdout)["python_full_version"]
        with _step(f"downloading wheels for Python {python} (the host's pip)"):
            subprocess.run(
                [sys.executable, "-c", _PIP_WITH_MARKERS, f"{tmp}/markers.json", "download"]
                + ["--quiet", "--only-binary=:all:", f"--python-version={python}"]
                + ["--dest", f"{tmp}/wheels", "--constraint", f"{tmp}/pins.txt", *requirements],
                check=True,
            )
        (Path(tmp) / "wheels").rename(dest)
    return dest


# --- buildah ---------------------------------------------------------------------------


def _bud(
    image: Image,
    dockerfile: Path,
    context: Path,
    base: Image | None = None,
    args: dict[str, str] | None = None,
    wheels: Path | None = None,
) -> None:
    """Build `image` from `dockerfile`, then save it as its OCI archive."""
    cmd = ["bud", "--isolation", "chroot", "--pull=never", "-f", str(dockerfile), "-t", image.local]
    if base:
        _ensure_in_storage(base)
        cmd += ["--build-arg", f"BASE={base.local}"]
    for name, value in (args or {}).items():
        cmd += ["--build-arg", f"{name}={value}"]
    if wheels:
        cmd += ["-v", f"{wheels}:/wheels:ro"]
        cmd += ["--build-arg", "PIP_OPTIONS=--no-index --find-links /wheels"]
    log = images_dir() / f"{image.repo}.log"
    with _step(f"building {image.ref} (log: {log})"):
        with log.open("w") as out:
            built = subprocess.run(
                ["buildah", *_storage(), *cmd, str(context)], stdout=out, stderr=out
            )
        if built.returncode:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise RuntimeError(f"building {image.ref} failed; the end of {log}:\n{tail}")
    with _step(f"saving {image.ref} as {image.archive.name}"):
        partial = image.archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        # Named as CRI will look it up, so `ctr images import` gives pods their name.
        _buildah("push", "--quiet", image.local, f"oci-archive:{partial}:{full_name(image.ref)}")
        partial.rename(image.archive)


def _ensure_in_storage(image: Image) -> None:
    """Put `image` back into buildah's storage from its archive if it is not there."""
    if _buildah_ok("inspect", "--type", "image", image.local):
        return
    with _step(f"loading {image.archive.name} into buildah"):
        image_id = _buildah("pull", "--quiet", f"oci-archive:{image.archive}").split()[-1]
        _buildah("tag", image_id, image.local)


@contextmanager
def _container(image: Image) -> Iterator[str]:
    _ensure_in_storage(image)
    name = _buildah("from", "--pull=never", "--quiet", image.local).strip()
    try:
        yield name
    finally:
        _buildah("rm", name)


def _tidy(images: list[Image], wheels: Path) -> None:
    """Drop what the current images superseded: older archives, wheelhouses and tags.

    The current images stay in buildah's storage: rebuilds start FROM them, and the
    tests run commands in them. Dependents come first in `images`, since buildah will
    not remove an image another one is built on.
    """
    keep = {image.archive for image in images} | {wheels}
    for image in images:
        for old in images_dir().glob(f"{image.repo}-*.oci.tar"):
            if old not in keep:
                old.unlink()
    for old in images_dir().glob("wheels-*"):
        if old not in keep:
            subprocess.run(["rm", "-rf", str(old)], check=True)
    listed = _buildah("images", "--format", "{{.Name}}:{{.Tag}}").split()
    for image in images:
        stale = [n for n in listed if n.startswith(f"localhost/{image.repo}:") and n != image.local]
        for name in stale:
            _buildah_ok("rmi", name)


@functools.cache
def _storage() -> tuple[str, ...]:
    """buildah's storage options: overlay where the kernel lets us mount it, else vfs.

    The storage lives in the cache, one folder per driver (a storage folder belongs to
    the driver that made it). PREFECT_RAYPOOL_BUILDAH_DRIVER picks one.
    """
    drivers = [os.environ.get("PREFECT_RAYPOOL_BUILDAH_DRIVER") or "overlay", "vfs"]
    for driver in drivers:
        root = cache_dir() / "buildah" / driver
        options = (
            "--root",
            f"{root}/storage",
            "--runroot",
            f"{root}/run",
            "--storage-driver",
            driver,
        )
        if _storage_works(options):
            return options
        _log(f"buildah's {driver} storage does not work here; trying the next")
    raise RuntimeError(f"no buildah storage driver works here (tried {drivers})")


def _storage_works(options: tuple[str, ...]) -> bool:
    probe = subprocess.run(
        ["buildah", *options, "from", "--quiet", "scratch"], capture_output=True, text=True
    )
    if probe.returncode:
        return False
    name = probe.stdout.strip()
    mounts = subprocess.run(["buildah", *options, "mount", name], capture_output=True)
    subprocess.run(["buildah", *options, "rm", name], capture_output=True)
    return mounts.returncode == 0


def _buildah(*args: str) -> str:
    done = subprocess.run(["buildah", *_storage(), *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"buildah {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _buildah_ok(*args: str) -> bool:
    return subprocess.run(["buildah", *_storage(), *args], capture_output=True).returncode == 0


# --- small helpers -----------------------------------------------------------------------


def _digest(*parts: str | Path) -> str:
    """A short hash of strings and of files (paths and contents, recursively)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            for path in _files(part):
                name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                digest.update(f"{name}\0".encode() + path.read_bytes())
        else:
            digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = (p for p in path.rglob("*") if p.is_file())
    # Build and bytecode leftovers are neither in the images nor part of their sources.
    return sorted(p for p in found if not any(_ignored(part) for part in p.parts))


def _ignored(name: str) -> bool:
    return name == "__pycache__" or name.endswith(".egg-info")


def _log(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def _step(what: str) -> Iterator[None]:
    _log(f"{what} ...")
    started = time.monotonic()
    yield
    _log(f"{what}: done in {time.monotonic() - started:.0f}s")


def main() -> int:
    """`python -m testbed images`: build what is missing, print each archive."""
    for ref, archive in ensure_images().items():
        size = archive.stat().st_size / 2**20
        print(f"{ref:45} {archive} ({size:.0f} MiB)")
    return 0
