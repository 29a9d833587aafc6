"""The sandbox and scorer images and their base: built offline, reused while nothing that goes
into them changed.

The base is a debootstrap minbase of Debian with python3 and pip, imported into Docker. The
sandbox image adds the `agent` user, torch and the Hugging Face stack (lm-eval included) from a
wheelhouse that `pip download` fills on the host (cached, so a second build downloads nothing),
and the `mlrb_metrics` helper. It comes in two builds of one Dockerfile: `cpu` (torch's CPU
wheel, what CI and the smoke scale use) and `gpu` (torch's CUDA wheels from PyPI, which bundle
the CUDA runtime, so a host needs only the NVIDIA driver and the Container Toolkit).

The scorer image is the sandbox image of the same build plus the evaluation toolchain
(lm-eval pinned, datasets, sacrebleu, rouge-score): it starts FROM the sandbox image, so the
two share every layer and the torch wheel is stored once.

Every package version is pinned in a lock file in the repository (`sandbox_image/lock/*.txt`),
the whole closure, written by `mlrb image lock` with pip's own resolver. Each image's label
`mlrb.fingerprint` hashes everything that goes into it, so an unchanged image is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DEFAULT_IMAGE = "mlrb-sandbox:latest"
DEFAULT_GPU_IMAGE = "mlrb-sandbox-gpu:latest"
DEFAULT_SCORER_IMAGE = "mlrb-scorer:latest"
DEFAULT_GPU_SCORER_IMAGE = "mlrb-scorer-gpu:latest"
DEFAULT_BASE = "mlrb-base:bookworm"
FINGERPRINT_LABEL = "mlrb.fingerprint"
KIND_LABEL = "mlrb.image"
CONTEXT_DIR = Path(__file__).with_name("sandbox_image")
LOCK_DIR = CONTEXT_DIR / "lock"
CONTEXT_FILES = ("Dockerfile", "mlrb_metrics.py")
SCORER_CONTEXT_FILES = ("Dockerfile.scorer",)
TORCH_VERSION = "2.13.0"
PYPI_SIMPLE = "https://pypi.org/simple"
# The sandbox's Python: Debian bookworm's python3 (glibc 2.36) on x86_64. pip does not widen
# a given platform to older glibc versions, so every compatible manylinux tag is listed.
_MANYLINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
_MANYLINUX += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
WHEEL_PLATFORM = (*(arg for tag in _MANYLINUX for arg in ("--platform", tag)),
                  "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")
SOURCE_MARK = "# source only"  # a lock line's note: PyPI has no wheel, the host builds one

Flavour = Literal["cpu", "gpu"]


class ImageError(RuntimeError):
    """The image could not be built or found; the message says what to do."""


@dataclass(frozen=True)
class ImageKind:
    """One of the four images: the sandbox or the scorer, in its cpu or gpu build."""

    role: Literal["sandbox", "scorer"]
    flavour: Flavour

    @property
    def key(self) -> str:
        return f"{self.role}-{self.flavour}"

    @property
    def input_path(self) -> Path:
        return CONTEXT_DIR / ("requirements.in" if self.role == "sandbox" else "scorer.in")

    @property
    def lock_path(self) -> Path:
        return LOCK_DIR / (f"{self.flavour}.txt" if self.role == "sandbox"
                           else f"scorer-{self.flavour}.txt")

    @property
    def context_files(self) -> tuple[str, ...]:
        return CONTEXT_FILES if self.role == "sandbox" else SCORER_CONTEXT_FILES

    @property
    def sandbox(self) -> ImageKind:
        """The sandbox image of the same build (the scorer's FROM; itself for a sandbox)."""
        return ImageKind("sandbox", self.flavour)

    def default_tag(self) -> str:
        env, tag = {
            "sandbox-cpu": ("MLRB_SANDBOX_IMAGE", DEFAULT_IMAGE),
            "sandbox-gpu": ("MLRB_GPU_IMAGE", DEFAULT_GPU_IMAGE),
            "scorer-cpu": ("MLRB_SCORER_IMAGE", DEFAULT_SCORER_IMAGE),
            "scorer-gpu": ("MLRB_GPU_SCORER_IMAGE", DEFAULT_GPU_SCORER_IMAGE),
        }[self.key]
        return os.environ.get(env) or tag

    def build_command(self) -> str:
        return "mlrb image build" + (" --scorer" if self.role == "scorer" else "") + (
            " --gpu" if self.flavour == "gpu" else "")


SANDBOX_CPU = ImageKind("sandbox", "cpu")
SANDBOX_GPU = ImageKind("sandbox", "gpu")
SCORER_CPU = ImageKind("scorer", "cpu")
SCORER_GPU = ImageKind("scorer", "gpu")
KINDS = (SANDBOX_CPU, SCORER_CPU, SANDBOX_GPU, SCORER_GPU)


def default_image() -> str:
    return SANDBOX_CPU.default_tag()


def default_scorer_image() -> str:
    return SCORER_CPU.default_tag()


def default_base(flavour: Flavour = "cpu") -> str:
    """The base image; the GPU build's may differ (MLRB_GPU_BASE_IMAGE), e.g. a lab's own."""
    if flavour == "gpu" and os.environ.get("MLRB_GPU_BASE_IMAGE"):
        return os.environ["MLRB_GPU_BASE_IMAGE"]
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


# ----- lock files

@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503)
    version: str
    source_only: bool = False

    def line(self) -> str:
        return f"{self.name}=={self.version}" + (f"  {SOURCE_MARK}" if self.source_only else "")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_input(kind: ImageKind) -> str:
    """The top-level requirements a lock is resolved from; the CPU build asks for torch's
    CPU wheel by its local version label."""
    text = kind.input_path.read_text()
    if kind.flavour == "cpu":
        text = re.sub(rf"^torch=={re.escape(TORCH_VERSION)}\s*$", f"torch=={TORCH_VERSION}+cpu",
                      text, flags=re.M)
    return text


def input_hash(kind: ImageKind) -> str:
    return hashlib.sha256(lock_input(kind).encode()).hexdigest()[:16]


def top_level(kind: ImageKind) -> list[str]:
    """The canonical names the input asks for."""
    names = []
    for line in lock_input(kind).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(canonical(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0]))
    return names


def read_lock(kind: ImageKind) -> list[Pin]:
    """The lock's pins; a missing lock is an error that names the command that writes it."""
    if not kind.lock_path.is_file():
        raise ImageError(f"no lock file {kind.lock_path}: run `mlrb image lock --{kind.flavour}`")
    pins = []
    for raw in kind.lock_path.read_text().splitlines():
        line, _, note = raw.partition("#")
        line = line.strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ImageError(f"{kind.lock_path}: {raw!r} is not an exact pin")
        pins.append(Pin(canonical(name), version.strip(), source_only=note.strip() == SOURCE_MARK[2:]))
    return pins


def lock_text(kind: ImageKind) -> str:
    if not kind.lock_path.is_file():
        raise ImageError(f"no lock file {kind.lock_path}: run `mlrb image lock --{kind.flavour}`")
    return kind.lock_path.read_text()


def lock_input_hash(kind: ImageKind) -> str | None:
    """The input hash the lock was written from (its header), to tell a stale lock."""
    match = re.search(r"^# input sha256: (\w+)$", lock_text(kind), flags=re.M)
    return match.group(1) if match else None


def _pip(flavour: Flavour) -> list[str]:
    """pip, as the build asks: the GPU build ignores the host's pip configuration, whose local
    wheels (a CPU torch) would stand in for PyPI's CUDA ones; MLRB_GPU_INDEX_URL names a mirror."""
    if flavour == "gpu":
        return [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check"]
    return [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _index_args(flavour: Flavour) -> list[str]:
    if flavour == "gpu":
        return ["--index-url", os.environ.get("MLRB_GPU_INDEX_URL") or PYPI_SIMPLE]
    extra = os.environ.get("MLRB_TORCH_CPU_INDEX")  # e.g. torch's own CPU wheel index
    return ["--extra-index-url", extra] if extra else []


_MISSING = (re.compile(r"No matching distribution found for (\S+)"),
            re.compile(r"Could not find a version that satisfies the requirement (\S+)"))


def _missing(output: str) -> list[str]:
    found: dict[str, None] = {}
    for pattern in _MISSING:
        for match in pattern.finditer(output):
            found[match.group(1)] = None
    return list(found)


def _run_pip(argv: list[str], log: Callable[[str], None], what: str, flavour: Flavour) -> None:
    log(f"$ {' '.join(argv)}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        if "is ignored: it is neither a file nor a directory" in line:
            continue  # the host's configured local indexes: noise, not news
        log(line.rstrip())
        tail = (tail + [line])[-200:]
    if proc.wait() == 0:
        return
    missing = _missing("".join(tail))
    where = ("PyPI" if flavour == "gpu" and not os.environ.get("MLRB_GPU_INDEX_URL")
             else "the package index")
    if missing:
        needs = " needed by torch's CUDA build" if flavour == "gpu" else ""
        raise ImageError(
            f"{what}: {where} has no wheel for {', '.join(missing)} (linux x86_64, CPython 3.11)"
            f"{needs}; point {'MLRB_GPU_INDEX_URL' if flavour == 'gpu' else 'MLRB_TORCH_CPU_INDEX'}"
            " at an index that has it, or pin another torch in "
            f"{SANDBOX_CPU.input_path.name} and run `mlrb image lock --{flavour}`")
    raise ImageError(f"{what}: pip failed with exit code {proc.returncode} (its output is above)")


def _host_matches_image() -> None:
    # the lock is resolved by this interpreter's markers: they must be the image's
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or platform.machine() != "x86_64":
        raise ImageError("`mlrb image lock` resolves for the image's Python (CPython 3.11, linux "
                         f"x86_64); this host runs {platform.python_implementation()} "
                         f"{platform.python_version()} on {sys.platform} {platform.machine()}")


def pins_from_report(report: dict[str, Any]) -> list[Pin]:
    """The closure pip's resolver chose, from `pip install --dry-run --report`."""
    pins = []
    for item in report.get("install", []):
        meta = item["metadata"]
        url = str(item.get("download_info", {}).get("url", ""))
        pins.append(Pin(canonical(meta["name"]), meta["version"],
                        source_only=not url.split("#", 1)[0].endswith(".whl")))
    return sorted(pins, key=lambda p: p.name)


def render_lock(kind: ImageKind, pins: Iterable[Pin]) -> str:
    source = "torch's CUDA wheels from PyPI" if kind.flavour == "gpu" else "torch's CPU wheel"
    head = [f"# The {kind.role} image's Python packages, {kind.flavour} build ({source}): the",
            "# whole closure, exact versions, resolved by pip for linux x86_64, CPython 3.11.",
            f"# Written by `mlrb image lock --{kind.flavour}` from {kind.input_path.name}; "
            "do not edit by hand.",
            f"# input sha256: {input_hash(kind)}"]
    return "\n".join([*head, *(p.line() for p in pins)]) + "\n"


def write_lock(kind: ImageKind, log: Callable[[str], None] = print) -> Path:
    """Resolve the kind's input with pip and write its lock; the scorer's is resolved against
    the sandbox lock of the same build, so the packages both hold agree."""
    _host_matches_image()
    with tempfile.TemporaryDirectory(prefix="mlrb-lock-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text(lock_input(kind))
        report = Path(tmp) / "report.json"
        argv = [*_pip(kind.flavour), "install", "--dry-run", "--ignore-installed", "--quiet",
                "--report", str(report), *_index_args(kind.flavour), "-r", str(req)]
        if kind.role == "scorer":
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("\n".join(p.line().split("  ")[0]
                                             for p in read_lock(kind.sandbox)) + "\n")
            argv += ["-c", str(constraints)]
        _run_pip(argv, log, f"locking the {kind.key} image", kind.flavour)
        pins = pins_from_report(json.loads(report.read_text()))
    LOCK_DIR.mkdir(exist_ok=True)
    kind.lock_path.write_text(render_lock(kind, pins))
    log(f"wrote {kind.lock_path} ({len(pins)} packages)")
    return kind.lock_path


def cuda_version(kind: ImageKind = SANDBOX_GPU) -> tuple[int, int] | None:
    """The CUDA runtime the GPU lock's torch wheels bundle (the driver must support it)."""
    for pin in read_lock(kind):
        if pin.name in ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu13"):
            major, minor = pin.version.split(".")[:2]
            return int(major), int(minor)
    return None


# ----- wheelhouses

def wheel_cache_dir() -> Path:
    env = os.environ.get("MLRB_HOME")
    base = Path(env).expanduser() / "cache" if env else Path.home() / ".cache" / "mlrb"
    return base / "wheels"


def _wheel_pins(kind: ImageKind) -> list[Pin]:
    """What the kind's wheelhouse holds: the scorer's only what its sandbox image lacks."""
    pins = read_lock(kind)
    if kind.role == "scorer":
        have = {(p.name, p.version) for p in read_lock(kind.sandbox)}
        pins = [p for p in pins if (p.name, p.version) not in have]
    return pins


def _requirements(kind: ImageKind = SANDBOX_CPU) -> str:
    """The requirements its wheelhouse is downloaded from (and keyed by)."""
    if kind.role == "sandbox":
        return lock_text(kind)
    return "".join(p.line() + "\n" for p in _wheel_pins(kind))


def _wheel_key(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return canonical(name), version.replace("%2B", "+")


def _reuse_wheels(house: Path, pins: list[Pin]) -> int:
    """Link wheels an earlier wheelhouse already holds (a lock refresh rarely changes torch)."""
    want = {(p.name, p.version) for p in pins}
    linked = 0
    for other in sorted(house.parent.glob("*/*.whl")):
        target = house / other.name
        if other.parent != house and not target.exists() and _wheel_key(other.name) in want:
            _link_or_copy(other, target)
            linked += 1
    return linked


def prepare_wheelhouse(log: Callable[[str], None] = print, kind: ImageKind = SANDBOX_CPU) -> Path:
    """Download the image's wheels once into the cache; later calls reuse the folder."""
    requirements = _requirements(kind)
    key = hashlib.sha256(requirements.encode()).hexdigest()[:16]
    house = wheel_cache_dir() / key
    marker = house / "complete.json"
    if marker.is_file():
        log(f"reusing wheelhouse {house}")
        return house
    house.mkdir(parents=True, exist_ok=True)
    (house / "requirements.txt").write_text(requirements)
    pins = _wheel_pins(kind)
    if _reuse_wheels(house, pins):
        log(f"reused wheels already in {house.parent}")
    binaries = [p for p in pins if not p.source_only]
    sources = [p for p in pins if p.source_only]
    what = f"fetching the wheels of the {kind.key} image"
    if binaries:
        (house / "binary.txt").write_text("".join(f"{p.name}=={p.version}\n" for p in binaries))
        _run_pip([*_pip(kind.flavour), "download", "--no-deps", "--only-binary=:all:",
                  *WHEEL_PLATFORM, *_index_args(kind.flavour), "--dest", str(house),
                  "-r", str(house / "binary.txt")], log, what, kind.flavour)
    if sources:
        # PyPI has only a source archive of these (pure Python): the host builds the wheel
        (house / "source.txt").write_text("".join(f"{p.name}=={p.version}\n" for p in sources))
        _run_pip([*_pip(kind.flavour), "wheel", "--no-deps", *_index_args(kind.flavour),
                  "--wheel-dir", str(house), "-r", str(house / "source.txt")], log, what,
                 kind.flavour)
    wheels = sorted(p.name for p in house.glob("*.whl"))
    if kind.flavour == "gpu" and any(w.startswith("torch-") and "+cpu" in w for w in wheels):
        raise ImageError(f"{house} holds torch's CPU wheel, not its CUDA build: remove it and run "
                         "`mlrb image build --gpu` again")
    marker.write_text(json.dumps({"wheels": wheels}, indent=1))
    return house


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ----- building

def fingerprint(base_id: str, kind: ImageKind = SANDBOX_CPU) -> str:
    """A hash of the Dockerfile, the helper files, the lock and the image it starts FROM (the
    base for a sandbox image, the sandbox image for a scorer)."""
    h = hashlib.sha256()
    for name in kind.context_files:
        h.update(name.encode() + b"\0" + (CONTEXT_DIR / name).read_bytes() + b"\0")
    h.update(b"lock\0" + lock_text(kind).encode() + b"\0")
    h.update(kind.key.encode() + b"\0")
    h.update(base_id.encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Rendered:
    """A build context written out, wheels aside: what `docker build` is given."""

    context: Path
    dockerfile: str
    buildargs: dict[str, str]
    labels: dict[str, str]


def render_context(kind: ImageKind, context: Path, base: str, base_id: str) -> Rendered:
    """Write the kind's Dockerfile, helper files and lock into `context` (wheels/ left empty)."""
    for name in kind.context_files:
        shutil.copy2(CONTEXT_DIR / name, context / name)
    wheels = context / "wheels"
    wheels.mkdir(exist_ok=True)
    (wheels / "requirements.txt").write_text(lock_text(kind))
    arg = "BASE" if kind.role == "sandbox" else "SANDBOX"
    return Rendered(context, kind.context_files[0], {arg: base, "FLAVOUR": kind.flavour},
                    {FINGERPRINT_LABEL: fingerprint(base_id, kind), KIND_LABEL: kind.key})


def _image_label(image: Any, label: str) -> str | None:
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    value = labels.get(label)
    return str(value) if value is not None else None


def image_state(kind: ImageKind, tag: str | None = None,
                client: Any = None) -> tuple[Literal["missing", "stale", "current", "unknown"], Any]:
    """Whether `tag` is there and built from what the repository holds now; with the image."""
    tag = tag or kind.default_tag()
    client = client or _client()
    try:
        image = client.images.get(tag)
    except _not_found():
        return "missing", None
    try:
        want = expected_fingerprint(kind, client)
    except ImageError:
        return "unknown", image
    return ("current" if _image_label(image, FINGERPRINT_LABEL) == want else "stale"), image


def expected_fingerprint(kind: ImageKind, client: Any, base: str | None = None) -> str:
    """The fingerprint an up-to-date image of the kind carries; ImageError when what it is
    built FROM is missing."""
    start = base or (default_base(kind.flavour) if kind.role == "sandbox"
                     else kind.sandbox.default_tag())
    try:
        return fingerprint(client.images.get(start).id, kind)
    except _not_found():
        raise ImageError(f"{start} is missing") from None


def _docker_build(client: Any, rendered: Rendered, tag: str, log: Callable[[str], None]) -> None:
    import docker.errors

    try:
        stream = client.api.build(path=str(rendered.context), dockerfile=rendered.dockerfile,
                                  tag=tag, buildargs=rendered.buildargs, labels=rendered.labels,
                                  rm=True, forcerm=True, network_mode="none", decode=True)
        for chunk in stream:
            if "stream" in chunk:
                text = str(chunk["stream"]).rstrip()
                if text:
                    log(text)
            elif "error" in chunk:
                raise ImageError(f"building {tag} failed: {chunk['error'].strip()}")
    except docker.errors.APIError as exc:
        raise ImageError(f"building {tag} failed: {exc.explanation or exc}") from None


def _build(kind: ImageKind, tag: str, start: str, force: bool, log: Callable[[str], None],
           client: Any) -> str:
    import docker.errors

    try:
        start_image = client.images.get(start)
    except docker.errors.ImageNotFound:
        hint = ("run `mlrb image base` first" if kind.role == "sandbox"
                else f"run `{kind.sandbox.build_command()}` first")
        raise ImageError(f"the base image {start} is missing: {hint}") from None
    want = fingerprint(start_image.id, kind)
    if not force:
        try:
            have = _image_label(client.images.get(tag), FINGERPRINT_LABEL)
        except docker.errors.ImageNotFound:
            have = None
        if have == want:
            log(f"{tag} is up to date (fingerprint {want})")
            return tag
    house = prepare_wheelhouse(log, kind)
    with tempfile.TemporaryDirectory(prefix="mlrb-image-", dir=house.parent) as tmp:
        rendered = render_context(kind, Path(tmp), start, start_image.id)
        for wheel in house.glob("*.whl"):
            _link_or_copy(wheel, rendered.context / "wheels" / wheel.name)
        log(f"building {tag} from {start}")
        _docker_build(client, rendered, tag, log)
    log(f"built {tag}")
    return tag


def build_image(tag: str | None = None, base: str | None = None, force: bool = False,
                log: Callable[[str], None] = print, client: Any = None, gpu: bool = False) -> str:
    """Build the sandbox image (or reuse an identical one); returns its tag."""
    kind = SANDBOX_GPU if gpu else SANDBOX_CPU
    return _build(kind, tag or kind.default_tag(), base or default_base(kind.flavour), force,
                  log, client or _client())


def build_scorer_image(tag: str | None = None, base: str | None = None, force: bool = False,
                       log: Callable[[str], None] = print, client: Any = None,
                       gpu: bool = False, sandbox: str | None = None) -> str:
    """Build the scorer image FROM the sandbox image of the same build (which is built or
    reused first, from `base`); returns its tag. An up-to-date scorer image is reused."""
    kind = SCORER_GPU if gpu else SCORER_CPU
    client = client or _client()
    sandbox_tag = build_image(tag=sandbox, base=base, force=force, log=log, client=client, gpu=gpu)
    return _build(kind, tag or kind.default_tag(), sandbox_tag, force, log, client)


def ensure_scorer_image(gpu: bool = False, log: Callable[[str], None] = print,
                        client: Any = None) -> str:
    """The scorer image's tag, built first when it is missing or out of date."""
    return build_scorer_image(gpu=gpu, log=log, client=client)
