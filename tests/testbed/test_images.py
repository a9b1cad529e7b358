"""The images pools run, as built here (testbed/images.py): what runs in them, as whom.

They use the cached archives (a cold build takes minutes, a warm one a second).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed import images as images_module
from testbed.images import (
    FLOWS_IMAGE,
    OPERATOR_IMAGE,
    PAUSE_IMAGE,
    RAY_IMAGE,
    Image,
    build_images,
    full_name,
    mounted,
    run_in_image,
)


def needs_images(test: Callable) -> Callable:
    """The first such test builds what is missing: minutes when cold, a second warm."""
    return pytest.mark.images(pytest.mark.timeout(1800)(test))


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return build_images()


def run(image: Image, *cmd: str, user: str | None = None) -> str:
    done = run_in_image(image, *cmd, user=user)
    assert done.returncode == 0, f"{cmd} in {image.ref}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def config(image: Image) -> dict:
    """The image's OCI config (User, Env, Cmd...), read from its archive."""
    with tarfile.open(image.archive) as tar:

        def blob(digest: str) -> dict:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
            assert member is not None
            return json.load(member)

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = blob(index["manifests"][0]["digest"])
        return blob(manifest["config"]["digest"])["config"]


@needs_images
def test_archives_carry_the_names_pods_use(images: dict[str, Image]) -> None:
    assert set(images) == {OPERATOR_IMAGE, RAY_IMAGE, FLOWS_IMAGE, PAUSE_IMAGE}
    for ref, image in images.items():
        with tarfile.open(image.archive) as tar:
            index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
        assert names == [full_name(ref)]
    assert full_name(RAY_IMAGE) == f"docker.io/library/{RAY_IMAGE}"
    assert full_name(PAUSE_IMAGE) == PAUSE_IMAGE


@needs_images
@pytest.mark.parametrize("ref", [RAY_IMAGE, FLOWS_IMAGE])
def test_ray_image_runs_ray_and_prefect_as_uid_1000(images: dict[str, Image], ref: str) -> None:
    image = images[ref]
    # Numeric, so the restricted Pod Security Standard's runAsNonRoot can verify it.
    assert config(image)["User"].split(":")[0] == "1000"
    assert run(image, "id", "-u").strip() == "1000"
    assert "2.60" in run(image, "ray", "--version")
    assert "3.9" in run(image, "prefect", "version")
    run(image, "python", "-c", "import prefect_raypool, prefect_raypool_operator")
    # The `kuberay` worker type loads (an Ephemeral pool's worker runs this image).
    out = run(image, "prefect", "work-pool", "get-default-base-job-template", "--type", "kuberay")
    assert "Failed to load" not in out and "rayjob_manifest" in out, out
    run(image, "pip", "check")  # Ray's and Prefect's dependencies agree
    run(image, "sh", "-c", "command -v wget")  # KubeRay's probes exec it


@needs_images
def test_example_flows_image_holds_the_flow(images: dict[str, Image]) -> None:
    image = images[FLOWS_IMAGE]
    assert config(image)["WorkingDir"] == "/opt/flows"
    run(image, "python", "-c", "import count_to; assert count_to.count_to.name == 'count-to'")


@needs_images
def test_operator_image_has_the_operator_and_no_ray_or_prefect(images: dict[str, Image]) -> None:
    image = images[OPERATOR_IMAGE]
    assert config(image)["User"] == "65532:65532"
    run(image, "python", "-c", "import kopf, kubernetes, prefect_raypool_operator", user="65532")
    for absent in ("ray", "prefect"):
        done = run_in_image(image, "python", "-c", f"import {absent}")
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


@needs_images
@pytest.mark.parametrize("ref", [OPERATOR_IMAGE, RAY_IMAGE, FLOWS_IMAGE])
def test_no_image_holds_the_test_bed(images: dict[str, Image], ref: str) -> None:
    with mounted(images[ref]) as root:
        found = [str(p.relative_to(root)) for p in _directories(root, "testbed")]
    assert found == []


@needs_images
def test_pause_image_is_the_static_pause_binary(images: dict[str, Image]) -> None:
    image = images[PAUSE_IMAGE]
    assert config(image)["Entrypoint"] == ["/pause"]
    with mounted(image) as root:
        files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
        assert files == [Path("pause")]
    # Static (FROM scratch has no loader or libc): it runs, and -v prints its version.
    assert "pause.c" in run(image, "/pause", "-v")


def _directories(root: Path, name: str) -> list[Path]:
    """Directories called `name` under `root`, not following links out of the image."""
    return [Path(d) / name for d, subdirs, _ in os.walk(root) if name in subdirs]


@pytest.mark.unit
def test_ray_image_key_follows_the_project_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing the runner, the worker, the operator or pyproject.toml rebuilds the ray image."""
    for path in ("runner", "kuberay", "operator", "images"):
        shutil.copytree(images_module.REPO / path, tmp_path / path)
    for path in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy(images_module.REPO / path, tmp_path / path)
    monkeypatch.setattr(images_module, "REPO", tmp_path)
    monkeypatch.setattr(images_module, "_bud", lambda *args, **kwargs: None)
    base, wheels = Image("localhost/base:1", "k"), tmp_path / "wheels-k"

    def key() -> str:
        dockerfile = tmp_path / "images" / "ray" / "Dockerfile"
        return images_module._project_image(RAY_IMAGE, dockerfile, base, wheels).key

    keys = [key()]
    (tmp_path / "runner" / "prefect_raypool" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "runner" / "prefect_raypool" / "__pycache__" / "x.pyc").write_bytes(b"x")
    keys.append(key())  # bytecode is not a source
    for edited in ("runner/prefect_raypool/__init__.py", "kuberay", "operator", "pyproject.toml"):
        target = tmp_path / edited
        if target.is_dir():
            (target / "new_module.py").write_text("")
        else:
            target.write_text(target.read_text() + "\n# edited\n")
        keys.append(key())
    assert keys[0] == keys[1]
    assert len(set(keys[1:])) == 5, keys
