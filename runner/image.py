"""The sandbox image and its base: built offline, reused while nothing that goes into it changed.

The base is a debootstrap minbase of Debian with python3 and pip, imported into Docker. The
sandbox image adds the `agent` user, CPU torch and the Hugging Face stack from a wheelhouse
that `pip download` fills on the host (cached, so a second build downloads nothing), and the
`mlrb_metrics` helper. Its label `mlrb.fingerprint` hashes everything that goes into it, so
an unchanged image is reused instead of rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_IMAGE = "mlrb-sandbox:latest"
DEFAULT_BASE = "mlrb-base:bookworm"
FINGERPRINT_LABEL = "mlrb.fingerprint"
CONTEXT_DIR = Path(__file__).with_name("sandbox_image")
CONTEXT_FILES = ("Dockerfile", "mlrb_metrics.py", "requirements.txt")
# The sandbox's Python: Debian bookworm's python3 (glibc 2.36) on x86_64. pip does not widen
# a given platform to older glibc versions, so every compatible manylinux tag is listed.
_MANYLINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
_MANYLINUX += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
WHEEL_PLATFORM = (*(arg for tag in _MANYLINUX for arg in ("--platform", tag)),
                  "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")


class ImageError(RuntimeError):
    """The image could not be built or found; the message says what to do."""


def default_image() -> str:
    return os.environ.get("MLRB_SANDBOX_IMAGE") or DEFAULT_IMAGE


def default_base() -> str:
    return os.environ.get("MLRB_BASE_IMAGE") or DEFAULT_BASE


def _client() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - every failure here means "no engine"
        raise ImageError(f"no Docker engine answers: {exc}") from None
    return client


def _not_found() -> type[Exception]:
    import docker.errors

    return docker.errors.ImageNotFound


def base_exists(name: str | None = None, client: Any = None) -> bool:
    client = client or _client()
    try:
        client.images.get(name or default_base())
    except _not_found():
        return False
    return True


def find_debootstrap() -> str | None:
    # /usr/sbin is not on a non-login root PATH on some systems
    found = shutil.which("debootstrap")
    if found is None and Path("/usr/sbin/debootstrap").exists():
        found = "/usr/sbin/debootstrap"
    return found


def build_base(name: str | None = None, suite: str = "bookworm", mirror: str | None = None,
               log: Callable[[str], None] = print) -> None:
    """debootstrap a minbase with python3 and pip, and import it into Docker as `name`."""
    name = name or default_base()
    debootstrap = find_debootstrap()
    if debootstrap is None:
        raise ImageError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageError("building the base image needs root (debootstrap creates device files)")
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise ImageError("the docker command line is not installed")
    with tempfile.TemporaryDirectory(prefix="mlrb-base-") as tmp:
        root = Path(tmp) / "root"
        argv = [debootstrap, "--variant=minbase", "--include=python3,python3-pip", suite, str(root)]
        if mirror:
            argv.append(mirror)
        log(f"$ {' '.join(argv)}")
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in done.stdout.splitlines()[-20:]:
            log(line)
        if done.returncode != 0:
            raise ImageError(f"debootstrap failed with exit code {done.returncode}")
        # apt caches are of no use in an image that never reaches a mirror again.
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        log(f"importing {root} as {name}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([docker_cli, "import", "-", name], stdin=tar.stdout,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ImageError(f"docker import failed: {imported.stdout.strip()}")
        log(f"built {name}")


def wheel_cache_dir() -> Path:
    env = os.environ.get("MLRB_HOME")
    base = Path(env).expanduser() / "cache" if env else Path.home() / ".cache" / "mlrb"
    return base / "wheels"


def _requirements() -> str:
    return (CONTEXT_DIR / "requirements.txt").read_text()


def fingerprint(base_id: str) -> str:
    """A hash of the Dockerfile, the helper files, the requirements and the base image id."""
    h = hashlib.sha256()
    for name in CONTEXT_FILES:
        h.update(name.encode() + b"\0" + (CONTEXT_DIR / name).read_bytes() + b"\0")
    h.update(base_id.encode())
    return h.hexdigest()[:32]


def prepare_wheelhouse(log: Callable[[str], None] = print) -> Path:
    """Download the sandbox's wheels once into the cache; later calls reuse the folder."""
    requirements = _requirements()
    key = hashlib.sha256(requirements.encode()).hexdigest()[:16]
    house = wheel_cache_dir() / key
    marker = house / "complete.json"
    if marker.is_file():
        log(f"reusing wheelhouse {house}")
        return house
    house.mkdir(parents=True, exist_ok=True)
    (house / "requirements.txt").write_text(requirements)
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", *WHEEL_PLATFORM,
            "--dest", str(house), "-r", str(house / "requirements.txt")]
    log(f"$ {' '.join(argv)}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        log(line.rstrip())
    if proc.wait() != 0:
        raise ImageError(f"pip download failed with exit code {proc.returncode}; "
                         "the wheels for the sandbox image could not be fetched")
    wheels = sorted(p.name for p in house.glob("*.whl"))
    marker.write_text(json.dumps({"wheels": wheels}, indent=1))
    return house


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _image_label(image: Any, label: str) -> str | None:
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    value = labels.get(label)
    return str(value) if value is not None else None


def build_image(tag: str | None = None, base: str | None = None, force: bool = False,
                log: Callable[[str], None] = print, client: Any = None) -> str:
    """Build the sandbox image (or reuse an identical one); returns its tag."""
    import docker.errors

    tag = tag or default_image()
    base = base or default_base()
    client = client or _client()
    try:
        base_image = client.images.get(base)
    except docker.errors.ImageNotFound:
        raise ImageError(f"the base image {base} is missing: run `mlrb image base` first") from None
    want = fingerprint(base_image.id)
    if not force:
        try:
            have = _image_label(client.images.get(tag), FINGERPRINT_LABEL)
        except docker.errors.ImageNotFound:
            have = None
        if have == want:
            log(f"{tag} is up to date (fingerprint {want})")
            return tag
    house = prepare_wheelhouse(log)
    with tempfile.TemporaryDirectory(prefix="mlrb-image-", dir=house.parent) as tmp:
        context = Path(tmp)
        for name in CONTEXT_FILES:
            shutil.copy2(CONTEXT_DIR / name, context / name)
        wheels = context / "wheels"
        wheels.mkdir()
        for wheel in house.glob("*.whl"):
            _link_or_copy(wheel, wheels / wheel.name)
        shutil.copy2(CONTEXT_DIR / "requirements.txt", wheels / "requirements.txt")
        log(f"building {tag} from {base}")
        try:
            stream = client.api.build(path=str(context), tag=tag, buildargs={"BASE": base},
                                      labels={FINGERPRINT_LABEL: want}, rm=True, forcerm=True,
                                      network_mode="none", decode=True)
            for chunk in stream:
                if "stream" in chunk:
                    text = str(chunk["stream"]).rstrip()
                    if text:
                        log(text)
                elif "error" in chunk:
                    raise ImageError(f"building {tag} failed: {chunk['error'].strip()}")
        except docker.errors.APIError as exc:
            raise ImageError(f"building {tag} failed: {exc.explanation or exc}") from None
    log(f"built {tag}")
    return tag
