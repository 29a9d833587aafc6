"""Models and datasets staged on the host, in the Hugging Face cache layout.

Each task's `task.toml` names its assets (tasks.api.AssetModel). They are fetched with the real
`huggingface_hub` client and kept under `$MLRB_HOME/assets/`:

    agent/hub/models--org--name/        what an agent may be given: exactly the tree the client
      blobs/ snapshots/<commit>/ refs/    writes with `cache_dir=`, so `HF_HUB_CACHE` pointed at it
      trees/<commit>.json                 with `HF_HUB_OFFLINE=1` serves `from_pretrained` unchanged
    scorer/hub/datasets--org--name/     scorer-only assets (held-out sets): a separate tree, so
                                        nothing mounted for an agent can reach them
    agent/datasets/org___name/          each staged dataset's `load_dataset` cache, built from its
    scorer/datasets/org___name/           snapshot (runner.dataset_cache): offline, that cache is
                                          all `datasets.load_dataset('org/name')` reads
    assets.lock.json                    per repository and revision: the commit fetched, the hub's
                                        file listing at it, each fetched file's size and sha256
    incoming/                           downloads in progress and imports being checked; never
                                        mounted, so a file is only ever used once it has verified
    quarantine/                         copies that failed their checksum, moved aside

A revision declared `pinned = false` (a branch) is resolved on its first fetch and locked: later
fetches and `verify` hold to the locked commit and checksums (trust on first use). A token for a
gated repository (HF_TOKEN, or `[hub] token` in the config) is handed to the client on the host
and written nowhere.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.api import AssetModel, TaskSpec

LOCK_NAME = "assets.lock.json"
LOCK_VERSION = 1
MARGIN_BYTES = 256 * 1024**2  # beyond the files themselves: the client's temporary copies, the lock
MARGIN_FRACTION = 0.05
EXPORT_ROOT = "mlrb-assets"
Status = Literal["present", "partial", "missing"]


class AssetError(Exception):
    """A fetch, verify, export or import that cannot go on; the message is one line."""


class DiskSpaceError(AssetError):
    """Too little free disk for what is missing; raised before anything is fetched."""


class ChecksumError(AssetError):
    """A file whose sha256 (or git blob id) is not what the declaration, lock or hub says."""


@dataclass(frozen=True)
class TaskAsset:
    """One task's declaration of one asset."""

    task: str
    asset: AssetModel

    @property
    def label(self) -> str:
        return f"{self.task}/{self.asset.name}"


@dataclass
class AssetState:
    task: str
    asset: AssetModel
    status: Status
    path: Path
    commit: str | None
    size_bytes: int  # exact once the hub's listing is locked; the declared estimate before
    size_exact: bool
    files_expected: int | None
    files_present: int

    def to_json(self) -> dict[str, Any]:
        a = self.asset
        return {"task": self.task, "name": a.name, "kind": a.kind, "for": a.audience, "repo": a.repo,
                "revision": a.revision, "pinned": a.pinned, "gated": a.gated, "scales": list(a.scales),
                "status": self.status, "commit": self.commit, "size_bytes": self.size_bytes,
                "size_exact": self.size_exact, "files_expected": self.files_expected,
                "files_present": self.files_present, "path": str(self.path)}


@dataclass
class Problem:
    label: str
    path: str
    message: str


@dataclass
class VerifyReport:
    checked_files: int = 0
    verified: list[str] = field(default_factory=list)
    not_present: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def task_assets(specs: Iterable[TaskSpec], scale: str | None = None) -> list[TaskAsset]:
    """Every asset the tasks declare, or only those `scale` needs."""
    return [TaskAsset(s.name, a) for s in specs
            for a in (s.assets if scale is None else s.assets_for(scale))]


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would, once created)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def repo_folder(asset: AssetModel) -> str:
    """The folder name the client uses: models--org--name, datasets--org--name."""
    return "--".join([f"{asset.kind}s", *asset.repo.split("/")])


def lock_key(asset: AssetModel) -> str:
    return f"{asset.kind}:{asset.repo}@{asset.revision}"


def _select(paths: Iterable[str], patterns: Iterable[str]) -> list[str]:
    # the same matching as the client's allow_patterns (fnmatch; a trailing "/" means a folder)
    pats = [p + "*" if p.endswith("/") else p for p in patterns]
    return sorted(p for p in paths if any(fnmatch.fnmatch(p, pat) for pat in pats))


def _hash_file(path: Path) -> tuple[str, str, int]:
    """sha256, the git blob id (what the hub calls a small file's oid) and the size, in one read."""
    size = path.stat().st_size
    sha = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode())  # noqa: S324 - git's object id, not a security hash
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            git.update(chunk)
    return sha.hexdigest(), git.hexdigest(), size


class AssetStore:
    """The staged assets under one MLRB_HOME."""

    def __init__(self, home: Path, *, endpoint: str | None = None, token: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.root = home / "assets"
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self._token = token
        self._log = log or (lambda _s: None)

    # ----- where things are

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    def hub_dir(self, audience: str) -> Path:
        """The cache folder for one side (agent or scorer): what HF_HUB_CACHE points at."""
        return self.root / audience / "hub"

    def repo_dir(self, asset: AssetModel) -> Path:
        return self.hub_dir(asset.audience) / repo_folder(asset)

    def prepared_dir(self, asset: AssetModel) -> Path:
        """A dataset's `load_dataset` cache: what HF_DATASETS_CACHE/<org___name> is inside."""
        from runner.dataset_cache import cache_folder

        return self.root / asset.audience / "datasets" / cache_folder(asset.repo)

    def needs_preparing(self, state: AssetState) -> bool:
        """A staged dataset whose `load_dataset` cache is missing or of another commit."""
        from runner.dataset_cache import prepared_commit

        return (state.asset.kind == "dataset" and state.status == "present"
                and prepared_commit(self.prepared_dir(state.asset)) != state.commit)

    def _prepare(self, item: TaskAsset, lock: dict[str, Any]) -> None:
        a = item.asset
        self._prepare_repo(item.label, a.audience, a.repo, lock["entries"][lock_key(a)]["commit"],
                           a.configs)

    def _prepare_repo(self, label: str, audience: str, repo: str, commit: str,
                      configs: Iterable[str] = ()) -> None:
        from runner.dataset_cache import DatasetCacheError, cache_folder, prepare

        folder = "--".join(["datasets", *repo.split("/")])
        self._log(f"{label}: building the load_dataset cache of {repo}@{commit[:12]}")
        try:
            prepare(self.hub_dir(audience) / folder / "snapshots" / commit, repo, configs,
                    self.root / audience / "datasets" / cache_folder(repo), commit)
        except DatasetCacheError as exc:
            raise AssetError(f"{label}: {exc}") from None

    # ----- the lock

    def read_lock(self) -> dict[str, Any]:
        try:
            data = json.loads(self.lock_path.read_text())
        except FileNotFoundError:
            return {"version": LOCK_VERSION, "entries": {}}
        except (OSError, ValueError) as exc:
            raise AssetError(f"{self.lock_path}: unreadable lock ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise AssetError(f"{self.lock_path}: not an assets lock")
        return data

    def _write_lock(self, lock: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.lock_path.with_name(f".{LOCK_NAME}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.lock_path)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / ".busy.lock"))
        try:
            lock.acquire(timeout=5)
        except Timeout:
            raise AssetError(f"another `mlrb assets` command is working in {self.root}") from None
        try:
            yield
        finally:
            lock.release()

    # ----- state

    def state(self, item: TaskAsset, lock: dict[str, Any] | None = None) -> AssetState:
        a = item.asset
        lock = self.read_lock() if lock is None else lock
        entry = lock["entries"].get(lock_key(a))
        path = self.repo_dir(a)
        if entry is None:
            staged = path.is_dir() and any((path / "snapshots").glob("*/*"))
            return AssetState(item.task, a, "partial" if staged else "missing", path, None,
                              a.size_bytes, False, None, 0)
        expected = _select(entry["tree"], a.files)
        snap = path / "snapshots" / entry["commit"]
        present = [p for p in expected if p in entry["files"] and (snap / p).is_file()]
        status: Status = ("present" if expected and len(present) == len(expected)
                          else "missing" if not present else "partial")
        size = sum(int(entry["tree"][p]["size"]) for p in expected)
        return AssetState(item.task, a, status, path, entry["commit"], size, True, len(expected),
                          len(present))

    def states(self, items: Iterable[TaskAsset]) -> list[AssetState]:
        lock = self.read_lock()
        return [self.state(i, lock) for i in items]

    # ----- fetch

    def fetch(self, items: list[TaskAsset]) -> list[AssetState]:
        """Stage what is missing of each asset; present ones are left alone.

        Refuses before any download when the disk cannot hold what is missing. Each file is
        checked after download and only then moved where loaders look; a bad one goes to
        quarantine/ and the fetch fails naming it.
        """
        with self._exclusive():
            lock = self.read_lock()
            todo = [i for i in items if self.state(i, lock).status != "present"]
            self._check_disk([self._missing_bytes(i, lock) for i in todo], what="fetch")
            failures: list[str] = []
            for item in todo:
                try:
                    self._fetch_one(item, lock)
                except ChecksumError as exc:
                    failures.append(str(exc))
                    if len(todo) == 1:
                        raise
            for item in items:  # a dataset fetched now, or staged before its cache was built
                if self.needs_preparing(self.state(item, lock)):
                    self._prepare(item, lock)
            if failures:
                raise ChecksumError(f"{len(failures)} of {len(todo)} assets failed: " + "; ".join(failures))
            return self.states(items)

    def _missing_bytes(self, item: TaskAsset, lock: dict[str, Any]) -> int:
        st = self.state(item, lock)
        if not st.size_exact:
            return item.asset.size_bytes
        entry = lock["entries"][lock_key(item.asset)]
        snap = st.path / "snapshots" / entry["commit"]
        return sum(int(entry["tree"][p]["size"]) for p in _select(entry["tree"], item.asset.files)
                   if not (p in entry["files"] and (snap / p).is_file()))

    def _check_disk(self, needs: list[int], *, what: str) -> None:
        need = sum(needs)
        if need == 0:
            return
        want = need + max(MARGIN_BYTES, int(need * MARGIN_FRACTION))
        free = free_bytes(self.root)
        if free < want:
            raise DiskSpaceError(
                f"not enough free disk to {what}: {human(need)} to download plus a margin "
                f"({human(want)} in all), but {self.root} has {human(free)} free; nothing was fetched")

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self._token)

    def _hub_call(self, item: TaskAsset, fn: Callable[[], Any]) -> Any:
        """Run a client call; its failures become one line that names the asset and no secret."""
        from huggingface_hub import errors as hfe

        a = item.asset
        try:
            return fn()
        except (hfe.GatedRepoError, hfe.RepositoryNotFoundError) as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            if isinstance(exc, hfe.GatedRepoError) or a.gated or status in (401, 403):
                how = ("set HF_TOKEN to a token that has accepted its terms" if not self._token
                       else "the token given has no access to it (accept its terms on the hub)")
                raise AssetError(f"{item.label}: {a.repo} is gated or private (HTTP {status}): {how}") from None
            raise AssetError(f"{item.label}: {a.repo} is not on the hub at {self.endpoint}") from None
        except hfe.RevisionNotFoundError:
            raise AssetError(f"{item.label}: {a.repo} has no revision {a.revision!r}") from None
        except hfe.OfflineModeIsEnabled:
            raise AssetError(f"{item.label}: HF_HUB_OFFLINE is set on this host; unset it to fetch") from None
        except hfe.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise AssetError(f"{item.label}: the hub answered HTTP {status} for {a.repo}") from None
        except (hfe.LocalEntryNotFoundError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AssetError(f"{item.label}: download from {self.endpoint} failed: {first}") from None
        except Exception as exc:  # noqa: BLE001 - the client's transport errors have no common base
            raise AssetError(f"{item.label}: download from {self.endpoint} failed: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _listing(self, item: TaskAsset, commit: str) -> dict[str, dict[str, Any]]:
        from huggingface_hub.hf_api import RepoFile

        api = self._api()
        a = item.asset
        entries = self._hub_call(item, lambda: list(api.list_repo_tree(
            a.repo, recursive=True, revision=commit, repo_type=a.kind)))
        return {f.path: {"size": int(f.size), "oid": f.blob_id,
                         "lfs_sha256": f.lfs.sha256 if f.lfs is not None else None}
                for f in entries if isinstance(f, RepoFile)}

    def _fetch_one(self, item: TaskAsset, lock: dict[str, Any]) -> None:
        from huggingface_hub import snapshot_download

        a = item.asset
        key = lock_key(a)
        entry = lock["entries"].get(key)
        if entry is not None:
            commit = entry["commit"]
        elif a.pinned:
            commit = a.revision
        else:
            info = self._hub_call(item, lambda: self._api().repo_info(a.repo, repo_type=a.kind,
                                                                      revision=a.revision))
            commit = str(info.sha)
        tree = entry["tree"] if entry is not None else self._listing(item, commit)
        wanted = _select(tree, a.files)
        if not wanted:
            raise AssetError(f"{item.label}: no file of {a.repo}@{commit[:12]} matches {list(a.files)}")
        live = self.repo_dir(a)
        done = entry["files"] if entry is not None else {}
        missing = [p for p in wanted if not (p in done and (live / "snapshots" / commit / p).is_file())]
        self._check_disk([sum(int(tree[p]["size"]) for p in missing)], what=f"fetch {item.label}")
        self._log(f"{item.label}: {a.repo}@{commit[:12]}: fetching {len(missing)} of {len(wanted)} "
                  f"files, {human(sum(int(tree[p]['size']) for p in missing))}")
        incoming = self.root / "incoming" / a.audience / "hub"
        self._hub_call(item, lambda: snapshot_download(
            a.repo, repo_type=a.kind, revision=commit, cache_dir=str(incoming),
            allow_patterns=[glob.escape(p) for p in missing], token=self._token,
            endpoint=self.endpoint))
        src = incoming / repo_folder(a)
        bad: list[str] = []
        files: dict[str, dict[str, Any]] = dict(done)
        for p in missing:
            link = src / "snapshots" / commit / p
            # files of one content share a blob, which the first of them already moved to live/
            got = link if link.is_file() else live / "blobs" / Path(os.path.realpath(link)).name
            if not got.is_file():
                raise AssetError(f"{item.label}: the hub's download of {p} left no file")
            sha, git, size = _hash_file(got)
            why = self._mismatch(a, p, sha, git, size, tree[p], entry)
            if why:
                where = self._quarantine(link, a, commit, p)
                bad.append(f"{p}: {why} (moved to {where})")
                continue
            _install(src, live, commit, p)
            files[p] = {"size": size, "sha256": sha}
        _copy_tree_cache(src, live, commit)
        _write_ref(live, a.revision if not a.pinned else None, commit)
        lock["entries"][key] = {"kind": a.kind, "repo": a.repo, "revision": a.revision,
                                "commit": commit, "tree": tree, "files": files,
                                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._write_lock(lock)
        shutil.rmtree(src, ignore_errors=True)
        if bad:
            raise ChecksumError(f"{item.label}: checksum mismatch: " + "; ".join(bad))

    @staticmethod
    def _mismatch(a: AssetModel, path: str, sha: str, git: str, size: int, listed: dict[str, Any],
                  entry: dict[str, Any] | None) -> str:
        """Why a downloaded file is not the one expected, or "" when it is."""
        declared = a.sha256.get(path)
        if declared and sha != declared:
            return f"sha256 {sha[:16]}… is not the declared {declared[:16]}…"
        locked = (entry or {}).get("files", {}).get(path)
        if locked and sha != locked["sha256"]:
            return f"sha256 {sha[:16]}… is not the locked {locked['sha256'][:16]}…"
        if size != int(listed["size"]):
            return f"{size} bytes, the hub lists {listed['size']}"
        if listed.get("lfs_sha256"):
            if sha != listed["lfs_sha256"]:
                return f"sha256 {sha[:16]}… is not the hub's {listed['lfs_sha256'][:16]}…"
        elif listed.get("oid") and git != listed["oid"]:
            return f"git blob id {git[:12]}… is not the hub's {str(listed['oid'])[:12]}…"
        return ""

    def _quarantine(self, link: Path, a: AssetModel, commit: str, path: str) -> Path:
        dest = (self.root / "quarantine" / time.strftime("%Y%m%dT%H%M%S") / repo_folder(a)
                / commit / path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        real = Path(os.path.realpath(link))
        shutil.move(str(real), str(dest))
        if link.is_symlink() or link.exists():
            link.unlink()
        return dest

    # ----- verify

    def verify(self, items: list[TaskAsset]) -> VerifyReport:
        """Hash every staged file of each asset against the lock and the declaration. A file
        that fails is moved to quarantine/ (so no loader reads it) and dropped from the lock."""
        report = VerifyReport()
        with self._exclusive():
            lock = self.read_lock()
            seen: set[tuple[str, str]] = set()
            for item in items:
                a = item.asset
                entry = lock["entries"].get(lock_key(a))
                st = self.state(item, lock)
                if entry is None or st.files_present == 0:
                    report.not_present.append(item.label)
                    continue
                snap = st.path / "snapshots" / entry["commit"]
                ok = True
                for p in _select(entry["tree"], a.files):
                    rec = entry["files"].get(p)
                    if rec is None or not (snap / p).is_file() or (str(st.path), p) in seen:
                        continue
                    seen.add((str(st.path), p))
                    sha, _git, size = _hash_file(snap / p)
                    report.checked_files += 1
                    why = ""
                    if a.sha256.get(p) and sha != a.sha256[p]:
                        why = f"sha256 {sha[:16]}… is not the declared {a.sha256[p][:16]}…"
                    elif sha != rec["sha256"] or size != rec["size"]:
                        why = f"sha256 {sha[:16]}… ({size} bytes) is not the locked {rec['sha256'][:16]}…"
                    if why:
                        ok = False
                        where = self._quarantine(snap / p, a, entry["commit"], p)
                        del entry["files"][p]
                        report.problems.append(Problem(item.label, p, f"{why}; moved to {where}"))
                if ok:
                    report.verified.append(item.label)
            if report.problems:
                self._write_lock(lock)
        return report

    # ----- export and import

    def export(self, dest: Path, items: list[TaskAsset]) -> list[str]:
        """Write a tar of the staged assets and their lock entries, for an air-gapped host.
        Every file is verified first; nothing is exported from a store that fails."""
        report = self.verify(items)
        if report.problems:
            first = report.problems[0]
            raise ChecksumError(f"{first.label}: {first.path}: {first.message}; nothing was exported")
        lock = self.read_lock()
        chosen = [i for i in items if self.state(i, lock).status != "missing"]
        if not chosen:
            raise AssetError("no staged asset to export (fetch them first)")
        entries = {lock_key(i.asset): lock["entries"][lock_key(i.asset)] for i in chosen}
        gz = dest.name.endswith((".gz", ".tgz"))
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        added: set[str] = set()
        try:
            with (tarfile.open(tmp, "w:gz") if gz else tarfile.open(tmp, "w")) as tar:
                body = json.dumps({"version": LOCK_VERSION, "entries": entries}, indent=1,
                                  sort_keys=True).encode()
                info = tarfile.TarInfo(f"{EXPORT_ROOT}/{LOCK_NAME}")
                info.size, info.mtime = len(body), int(time.time())
                tar.addfile(info, io.BytesIO(body))
                for item in chosen:
                    a = item.asset
                    entry = entries[lock_key(a)]
                    live = self.repo_dir(a)
                    arc = f"{EXPORT_ROOT}/{a.audience}/hub/{repo_folder(a)}"
                    for p in _select(entry["tree"], a.files):
                        link = live / "snapshots" / entry["commit"] / p
                        if p not in entry["files"] or not link.is_file():
                            continue
                        blob = Path(os.path.realpath(link))
                        for path, name in ((blob, f"{arc}/blobs/{blob.name}"),
                                           (link, f"{arc}/snapshots/{entry['commit']}/{p}")):
                            if name not in added:
                                tar.add(str(path), arcname=name, recursive=False)
                                added.add(name)
                    for extra in [*(live / "refs").glob("**/*"), live / "trees" / f"{entry['commit']}.json"]:
                        name = f"{arc}/{extra.relative_to(live)}"
                        if extra.is_file() and name not in added:
                            tar.add(str(extra), arcname=name, recursive=False)
                            added.add(name)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return [i.label for i in chosen]

    def import_(self, src: Path) -> list[str]:
        """Install the assets of an export: every file is checked against the export's lock
        (and this host's lock, where it has the same entry) before anything is installed."""
        with self._exclusive():
            work = self.root / "incoming" / f"import-{uuid.uuid4().hex[:8]}"
            work.mkdir(parents=True)
            try:
                try:
                    with tarfile.open(src) as tar:
                        tar.extractall(work, filter="data")
                except (OSError, tarfile.TarError) as exc:
                    raise AssetError(f"{src}: not an assets export ({exc})") from None
                base = work / EXPORT_ROOT
                try:
                    theirs = json.loads((base / LOCK_NAME).read_text())["entries"]
                except (OSError, ValueError, KeyError, TypeError):
                    raise AssetError(f"{src}: has no {EXPORT_ROOT}/{LOCK_NAME}; not an assets export") from None
                lock = self.read_lock()
                plan = self._check_import(src, base, theirs, lock)
                installed: list[str] = []
                for key, audience, folder in plan:
                    entry = theirs[key]
                    srcdir, live = base / audience / "hub" / folder, self.hub_dir(audience) / folder
                    mine = lock["entries"].get(key)
                    files = dict(mine["files"]) if mine else {}
                    for p in entry["files"]:
                        if (srcdir / "snapshots" / entry["commit"] / p).is_file():
                            _install(srcdir, live, entry["commit"], p)
                            files[p] = entry["files"][p]
                    _copy_tree_cache(srcdir, live, entry["commit"])
                    for ref in (srcdir / "refs").glob("**/*"):
                        if ref.is_file():
                            _write_ref(live, str(ref.relative_to(srcdir / "refs")), ref.read_text().strip())
                    lock["entries"][key] = {**entry, "files": files}
                    installed.append(f"{entry['repo']}@{entry['commit'][:12]}")
                self._write_lock(lock)
                for key, audience, _folder in plan:  # every config its card declares
                    entry = theirs[key]
                    if entry["kind"] == "dataset":
                        self._prepare_repo(entry["repo"], audience, entry["repo"], entry["commit"])
                return installed
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _check_import(self, src: Path, base: Path, theirs: dict[str, Any],
                      lock: dict[str, Any]) -> list[tuple[str, str, str]]:
        plan: list[tuple[str, str, str]] = []
        for key, entry in theirs.items():
            mine = lock["entries"].get(key)
            if mine is not None and mine["commit"] != entry["commit"]:
                raise AssetError(f"{src}: {key} is locked here at {mine['commit'][:12]}, the export "
                                 f"has {entry['commit'][:12]}; nothing was imported")
            kind, repo = entry["kind"], entry["repo"]
            folder = "--".join([f"{kind}s", *repo.split("/")])
            found = [aud for aud in ("agent", "scorer") if (base / aud / "hub" / folder).is_dir()]
            if len(found) != 1:
                raise AssetError(f"{src}: {repo} is not in the export once; nothing was imported")
            snap = base / found[0] / "hub" / folder / "snapshots" / entry["commit"]
            for p, rec in entry["files"].items():
                f = snap / p
                real = Path(os.path.realpath(f))
                if not f.is_file() or not real.is_relative_to(base.resolve()):
                    raise AssetError(f"{src}: {repo}: {p} is missing from the export; nothing was imported")
                sha, _git, size = _hash_file(f)
                known = (mine or {}).get("files", {}).get(p)
                if sha != rec["sha256"] or size != rec["size"] or (known and known["sha256"] != sha):
                    raise ChecksumError(f"{src}: {repo}: {p}: sha256 {sha[:16]}… is not the locked "
                                        f"{(known or rec)['sha256'][:16]}…; nothing was imported")
            plan.append((key, found[0], folder))
        return plan


def _install(src_repo: Path, dst_repo: Path, commit: str, path: str) -> None:
    """Move one verified file from a staging tree into the live one, in the client's layout:
    the content in blobs/, a relative symlink to it in snapshots/<commit>/."""
    link = src_repo / "snapshots" / commit / path
    real = Path(os.path.realpath(link))
    blob = dst_repo / "blobs" / real.name
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        tmp = blob.with_name(f".{blob.name}.{uuid.uuid4().hex[:8]}")
        if link.is_symlink():
            shutil.move(str(real), str(tmp))
        else:  # a client without symlinks writes the file itself into snapshots/
            shutil.copy2(real, tmp)
        tmp.replace(blob)
    dst = dst_repo / "snapshots" / commit / path
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(os.path.relpath(blob, dst.parent), dst)


def _copy_tree_cache(src_repo: Path, dst_repo: Path, commit: str) -> None:
    # the client's listing at the commit: offline, it tells a complete snapshot from a partial one
    tree = src_repo / "trees" / f"{commit}.json"
    if tree.is_file():
        (dst_repo / "trees").mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree, dst_repo / "trees" / tree.name)


def _write_ref(repo: Path, revision: str | None, commit: str) -> None:
    """refs/<revision> -> commit, and refs/main when none is there, so a loader that names no
    revision (the prompt's own `from_pretrained('org/name')`) finds the staged commit offline."""
    for name in dict.fromkeys([r for r in (revision, "main") if r]):
        ref = repo / "refs" / name
        if name != revision and ref.exists():
            continue
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(commit)
        tmp.replace(ref)


# ----- mounting a task's staged assets into a sandbox

HUB_INSIDE = "/opt/mlrb/hub"  # the hub cache a sandbox sees: only its task's repositories
DATASETS_INSIDE = "/opt/mlrb/datasets"  # its HF_DATASETS_CACHE: writable, the prepared caches inside read-only
Mount = tuple[Path, str]


class MissingAssetsError(AssetError):
    """A full-scale run whose task's assets are not all staged; raised before any sandbox starts."""


def asset_mounts(task: TaskSpec, scale: str, home: Path, *,
                 audience: Literal["agent", "scorer"] = "agent") -> tuple[Mount, ...]:
    """Read-only mounts of the task's staged repositories for one side, each at
    HUB_INSIDE/<models--org--name>: the agent gets its agent-visible assets only; the scorer gets
    those and the scorer-only ones. Raises MissingAssetsError, naming `mlrb assets fetch`, when
    one is not fully staged."""
    wanted = [a for a in task.assets_for(scale) if audience == "scorer" or a.audience == "agent"]
    if not wanted:
        return ()
    store = AssetStore(home)
    states = store.states([TaskAsset(task.name, a) for a in wanted])
    missing = [s for s in states if s.status != "present"]
    if missing:
        what = ", ".join(f"{s.asset.name} ({s.asset.repo}, {s.status})" for s in missing)
        raise MissingAssetsError(
            f"{task.name} at {scale} scale needs staged assets that are not in {store.root}: {what}; "
            f"run `mlrb assets fetch {task.name} --scale {scale}`")
    unprepared = [s for s in states if store.needs_preparing(s)]
    if unprepared:
        what = ", ".join(f"{s.asset.name} ({s.asset.repo})" for s in unprepared)
        raise MissingAssetsError(
            f"{task.name} at {scale} scale needs the load_dataset cache of {what}, which is not "
            f"built in {store.root}; run `mlrb assets fetch {task.name} --scale {scale}`")
    mounts = {s.path: f"{HUB_INSIDE}/{s.path.name}" for s in states}
    for s in states:
        if s.asset.kind == "dataset":
            prepared = store.prepared_dir(s.asset)
            mounts[prepared] = f"{DATASETS_INSIDE}/{prepared.name}"
    return tuple(mounts.items())


def asset_env(mounts: tuple[Mount, ...]) -> tuple[tuple[str, str], ...]:
    """The environment that makes the prompt's own `from_pretrained`/`load_dataset` calls read
    the mounted cache, with the hub offline."""
    offline = (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"))
    datasets = (("HF_DATASETS_CACHE", DATASETS_INSIDE),) if asset_scratch(mounts) else ()
    return ((("HF_HUB_CACHE", HUB_INSIDE),) if mounts else ()) + datasets + offline


def asset_scratch(mounts: tuple[Mount, ...]) -> tuple[str, ...]:
    """The empty writable folders the mounts sit in: the datasets cache, where `load_dataset`
    writes its lock files beside the read-only prepared caches."""
    inside = any(dest.startswith(DATASETS_INSIDE + "/") for _host, dest in mounts)
    return (DATASETS_INSIDE,) if inside else ()
