"""Staged assets against a stand-in hub: the real huggingface_hub client downloads from a local
HTTP server that speaks the hub's API, into MLRB_HOME, and the `mlrb assets` commands run as a
user runs them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from runner import assets as assets_mod
from runner.assets import AssetStore, ChecksumError, DiskSpaceError, task_assets
from tasks.api import TaskSpecError, load_task
from tests.hub_server import StandInHub

TOKEN = "hf_standin_secret_token_1234567890"
BIG = 21 * 1024 * 1024  # over the client's 10 MiB read size, so a cut transfer leaves bytes to resume from

SPEC_HEAD = """
name = "{name}"
title = "Assets fixture"
source = "tests"
metric = "m"
deliverable = "nothing"

[smoke]
time_s = 60

[full]
time_s = 60
"""


@pytest.fixture
def hub():
    h = StandInHub().start()
    yield h
    h.stop()


@pytest.fixture
def model_bytes() -> bytes:
    return os.urandom(BIG)


def tiny_repos(hub: StandInHub, weights: bytes) -> dict[str, str]:
    """A tiny model (config, tokenizer, safetensors-named weights) and a dataset; their commits."""
    m = hub.add("model", "org/tiny-model", {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
        "tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors": weights,
        "README.md": b"# tiny",
    }, lfs=("model.safetensors",))
    d = hub.add("dataset", "org/tiny-data", {
        "data/train.jsonl": b'{"text": "hello"}\n' * 500,
        "data/validation.jsonl": b'{"text": "bye"}\n' * 50,
    })
    h = hub.add("dataset", "org/heldout", {"test.jsonl": b'{"q": 1, "a": 2}\n' * 20})
    return {"model": m.commit, "data": d.commit, "heldout": h.commit}


def write_task(root: Path, name: str, assets_toml: str) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.toml").write_text(SPEC_HEAD.format(name=name) + assets_toml)
    return root


def standard_task(root: Path, commits: dict[str, str], model_sha: str | None = None) -> Path:
    sha = f'sha256 = {{ "model.safetensors" = "{model_sha}" }}\n' if model_sha else ""
    return write_task(root, "assets_task", f"""
[[assets]]
name = "tiny-model"
kind = "model"
repo = "org/tiny-model"
revision = "main"
pinned = false
files = ["*.json", "*.safetensors"]
size_bytes = {BIG + 100}
for = "agent"
{sha}
[[assets]]
name = "tiny-data"
kind = "dataset"
repo = "org/tiny-data"
revision = "{commits['data']}"
size_bytes = 20000
for = "agent"

[[assets]]
name = "heldout"
kind = "dataset"
repo = "org/heldout"
revision = "main"
pinned = false
size_bytes = 1000
for = "scorer"
""")


def items_of(root: Path, name: str = "assets_task", scale: str | None = "full"):
    return task_assets([load_task(name, root=root)], scale)


def store(home: Path, hub: StandInHub, token: str | None = None) -> AssetStore:
    return AssetStore(home, endpoint=hub.url, token=token)


def every_file_text(root: Path) -> bytes:
    out = b""
    for p in root.rglob("*"):
        if p.is_file():
            out += p.read_bytes()
    return out


def test_fetch_stages_the_hub_cache_layout_and_list_shows_present(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    s = store(tmp_path / "home", hub)
    before = {st.asset.name: st.status for st in s.states(items_of(root))}
    assert before == {"tiny-model": "missing", "tiny-data": "missing", "heldout": "missing"}

    states = s.fetch(items_of(root))
    assert {st.asset.name: st.status for st in states} == {
        "tiny-model": "present", "tiny-data": "present", "heldout": "present"}
    model = next(st for st in states if st.asset.name == "tiny-model")
    assert model.commit == commits["model"] and model.size_exact and model.files_expected == 3
    repo = tmp_path / "home" / "assets" / "agent" / "hub" / "models--org--tiny-model"
    assert model.path == repo
    # exactly what the client writes with cache_dir=: blobs, snapshot links, the ref, the listing
    snap = repo / "snapshots" / commits["model"]
    assert (snap / "model.safetensors").is_symlink()
    assert (snap / "model.safetensors").read_bytes() == model_bytes
    assert (repo / "refs" / "main").read_text() == commits["model"]
    assert (repo / "trees" / f"{commits['model']}.json").is_file()
    assert not (snap / "README.md").exists()  # not in the declared patterns
    # the unchanged loading path, offline, reads the staged copy
    from huggingface_hub import hf_hub_download

    got = hf_hub_download("org/tiny-model", "config.json", cache_dir=str(repo.parent),
                          local_files_only=True)
    assert json.loads(Path(got).read_text())["hidden_size"] == 8
    # a pinned commit is served for a loader that names no revision, too
    data_repo = tmp_path / "home" / "assets" / "agent" / "hub" / "datasets--org--tiny-data"
    assert (data_repo / "refs" / "main").read_text() == commits["data"]
    # the lock records commit, sizes and sha256 (trust on first use for the unpinned one)
    lock = json.loads((tmp_path / "home" / "assets" / "assets.lock.json").read_text())
    entry = lock["entries"]["model:org/tiny-model@main"]
    assert entry["commit"] == commits["model"]
    assert entry["files"]["model.safetensors"] == {
        "size": BIG, "sha256": hashlib.sha256(model_bytes).hexdigest()}
    # a second fetch has nothing to do: no file is downloaded again
    n = len(hub.gets("model.safetensors"))
    s.fetch(items_of(root))
    assert len(hub.gets("model.safetensors")) == n
    assert s.verify(items_of(root)).problems == []


def test_a_scorer_only_asset_is_staged_apart_from_the_agents_and_listed_as_such(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    spec = load_task("assets_task", root=root)
    assert [a.name for a in spec.assets_for("full", "scorer")] == ["heldout"]
    assert "heldout" not in [a.name for a in spec.assets_for("full", "agent")]
    env = cli_env(tmp_path, hub, root)
    s = store(Path(env["MLRB_HOME"]), hub)
    s.fetch(items_of(root))
    agent_tree = s.hub_dir("agent")
    assert not any("heldout" in str(p) for p in agent_tree.rglob("*"))
    assert (s.hub_dir("scorer") / "datasets--org--heldout").is_dir()
    rows = json.loads(mlrb(env, "assets", "list", "assets_task", "--json").stdout)
    held = next(r for r in rows if r["name"] == "heldout")
    assert held["for"] == "scorer" and held["status"] == "present"
    assert "/assets/scorer/hub/" in held["path"]
    table = mlrb(env, "assets", "list", "assets_task").stdout
    line = next(ln for ln in table.splitlines() if "heldout" in ln)
    assert " scorer " in line and "present" in line


def test_an_interrupted_download_resumes_with_a_range_request_and_verifies(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    hub.drop_once.add("model.safetensors")
    s = store(tmp_path / "home", hub)
    s.fetch(items_of(root))
    gets = hub.gets("/model.safetensors")
    assert gets[0].range is None
    ranged = [g for g in gets if g.range]
    assert ranged, f"no Range request after the cut: {gets}"
    assert ranged[0].range == f"bytes={10 * 1024 * 1024}-"  # from where the first transfer stopped
    snap = s.repo_dir(load_task("assets_task", root=root).assets[0]) / "snapshots" / commits["model"]
    assert hashlib.sha256((snap / "model.safetensors").read_bytes()).digest() == \
        hashlib.sha256(model_bytes).digest()
    report = s.verify(items_of(root))
    assert report.problems == [] and "assets_task/tiny-model" in report.verified


def test_a_checksum_mismatch_is_a_clear_error_and_the_bad_copy_is_never_used(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    corrupted = bytearray(model_bytes)
    corrupted[1000] ^= 0xFF  # same length: the client's own size check passes
    hub.serve_instead["model.safetensors"] = bytes(corrupted)
    s = store(tmp_path / "home", hub)
    item = next(i for i in items_of(root) if i.asset.name == "tiny-model")
    with pytest.raises(ChecksumError) as err:
        s.fetch([item])
    msg = str(err.value)
    assert "\n" not in msg and "model.safetensors" in msg and "checksum mismatch" in msg
    assert "quarantine" in msg
    repo = s.repo_dir(item.asset)
    assert not (repo / "snapshots" / commits["model"] / "model.safetensors").exists()
    assert not any(p.read_bytes() == bytes(corrupted) for p in (repo / "blobs").iterdir())
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/tiny-model", "model.safetensors", cache_dir=str(repo.parent),
                        local_files_only=True)
    assert s.state(item).status == "partial"
    quarantined = list((tmp_path / "home" / "assets" / "quarantine").rglob("model.safetensors"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(corrupted)
    # the hub mends; the next fetch completes and verifies
    del hub.serve_instead["model.safetensors"]
    assert s.fetch([item])[0].status == "present"


def test_a_declared_sha256_that_the_download_does_not_match_is_refused(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits, model_sha="0" * 64)
    s = store(tmp_path / "home", hub)
    item = next(i for i in items_of(root) if i.asset.name == "tiny-model")
    with pytest.raises(ChecksumError, match="not the declared 0000"):
        s.fetch([item])
    assert not (s.repo_dir(item.asset) / "snapshots" / commits["model"] / "model.safetensors").exists()


def test_verify_finds_a_file_changed_after_staging_and_exits_1(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    env = cli_env(tmp_path, hub, root)
    mlrb(env, "assets", "fetch", "assets_task")
    assert "0 mismatched" in mlrb(env, "assets", "verify", "assets_task").stdout
    home = Path(env["MLRB_HOME"])
    blob = next((home / "assets" / "agent" / "hub" / "datasets--org--tiny-data" / "blobs").iterdir())
    blob.write_bytes(b"tampered")
    proc = mlrb(env, "assets", "verify", "assets_task", check=False)
    assert proc.returncode == 1
    assert "MISMATCH assets_task/tiny-data" in proc.stderr and "Traceback" not in proc.stderr
    # moved aside: what loaders would read is gone, and the asset shows as partial
    rows = json.loads(mlrb(env, "assets", "list", "assets_task", "--json").stdout)
    assert next(r for r in rows if r["name"] == "tiny-data")["status"] == "partial"


def test_too_little_disk_is_a_clear_error_before_anything_is_fetched(tmp_path, hub, model_bytes, monkeypatch):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    probed: list[Path] = []

    def tiny_disk(path: Path) -> int:
        probed.append(path)
        return 5 * 1024 * 1024

    monkeypatch.setattr(assets_mod, "free_bytes", tiny_disk)
    s = store(tmp_path / "home", hub)
    with pytest.raises(DiskSpaceError) as err:
        s.fetch(items_of(root))
    msg = str(err.value)
    assert "not enough free disk" in msg and "nothing was fetched" in msg and "5.2 MB free" in msg
    assert probed and hub.requests == []  # refused before the hub was even asked
    assert not (tmp_path / "home" / "assets" / "agent").exists()


def test_a_gated_repo_needs_hf_token_which_is_written_nowhere(tmp_path, hub, model_bytes):
    hub.add("model", "org/gated-model", {"config.json": b'{"gated": true}',
                                          "model.safetensors": model_bytes[:4096]},
            lfs=("model.safetensors",), token=TOKEN)
    root = write_task(tmp_path / "tasks", "gated_task", """
[[assets]]
name = "gated"
kind = "model"
repo = "org/gated-model"
revision = "main"
pinned = false
gated = true
size_bytes = 5000
for = "agent"
""")
    env = cli_env(tmp_path, hub, root)
    env.pop("HF_TOKEN", None)
    proc = mlrb(env, "assets", "fetch", "gated_task", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "gated" in last and "HF_TOKEN" in last
    env["HF_TOKEN"] = TOKEN
    out = mlrb(env, "assets", "fetch", "gated_task").stdout
    assert "gated_task/gated: present" in out
    assert any(r.authorization == f"Bearer {TOKEN}" for r in hub.requests)
    home = Path(env["MLRB_HOME"])
    assert TOKEN.encode() not in every_file_text(home)
    exported = tmp_path / "gated.tar"
    mlrb(env, "assets", "export", str(exported), "gated_task")
    assert TOKEN.encode() not in exported.read_bytes()


def test_export_then_import_on_a_second_home(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    env = cli_env(tmp_path, hub, root)
    mlrb(env, "assets", "fetch", "assets_task")
    tar = tmp_path / "assets.tar"
    out = mlrb(env, "assets", "export", str(tar), "assets_task").stdout
    assert "exported 3 assets" in out

    # the air-gapped host: another MLRB_HOME, and no hub at all
    env2 = {**env, "MLRB_HOME": str(tmp_path / "gpu-host"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = mlrb(env2, "assets", "import", str(tar)).stdout
    assert "imported 3 repositories" in out
    rows = json.loads(mlrb(env2, "assets", "list", "assets_task", "--json").stdout)
    assert {r["name"]: r["status"] for r in rows} == {
        "tiny-model": "present", "tiny-data": "present", "heldout": "present"}
    assert "0 mismatched" in mlrb(env2, "assets", "verify", "assets_task").stdout
    snap = tmp_path / "gpu-host" / "assets" / "agent" / "hub" / "models--org--tiny-model" / "snapshots"
    assert (snap / commits["model"] / "model.safetensors").read_bytes() == model_bytes
    # a second fetch there has nothing to download, so it needs no hub
    assert "present" in mlrb(env2, "assets", "fetch", "assets_task").stdout


def test_an_import_whose_files_do_not_match_its_lock_installs_nothing(tmp_path, hub, model_bytes):

    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    s = store(tmp_path / "home", hub)
    s.fetch(items_of(root))
    tar = tmp_path / "assets.tar"
    s.export(tar, items_of(root))
    bad = tmp_path / "bad.tar"
    with tarfile.open(tar) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m) if m.isfile() else None
            if f is not None and "datasets--org--tiny-data/blobs/" in m.name:
                dst.addfile(m, io.BytesIO(b"x" * m.size))  # same size, other bytes
            else:
                dst.addfile(m, f)
    other = store(tmp_path / "other", hub)
    with pytest.raises(ChecksumError, match="nothing was imported"):
        other.import_(bad)
    assert not (tmp_path / "other" / "assets" / "agent").exists()
    assert not (tmp_path / "other" / "assets" / "assets.lock.json").exists()


@pytest.mark.parametrize("body, field", [
    ('revision = "main"\n', "revision"),  # a branch without pinned = false
    ('revision = "' + "a" * 40 + '"\nkind = "weights"\n', "kind"),
    ('revision = "' + "a" * 40 + '"\nsha256 = { "x.bin" = "nothex" }\n', "sha256"),
    ('revision = "' + "a" * 40 + '"\nscales = ["huge"]\n', "scales"),
])
def test_a_broken_asset_declaration_is_a_clear_error_naming_file_and_field(tmp_path, body, field):
    kind = "" if "kind =" in body else 'kind = "model"\n'
    root = write_task(tmp_path / "tasks", "broken_task", f"""
[[assets]]
name = "thing"
repo = "org/thing"
size_bytes = 10
for = "agent"
{kind}{body}""")
    with pytest.raises(TaskSpecError) as err:
        load_task("broken_task", root=root)
    msg = str(err.value)
    assert str(root / "broken_task" / "task.toml") in msg
    assert f"assets[0] (thing).{field}" in msg


def test_two_assets_with_one_name_and_a_missing_audience_are_refused(tmp_path):
    root = write_task(tmp_path / "tasks", "dup_task", """
[[assets]]
name = "a"
kind = "model"
repo = "org/a"
revision = "main"
pinned = false
size_bytes = 1
for = "agent"

[[assets]]
name = "a"
kind = "model"
repo = "org/b"
revision = "main"
pinned = false
size_bytes = 1
""")
    with pytest.raises(TaskSpecError) as err:
        load_task("dup_task", root=root)
    assert "assets[1] (a).for: Field required" in str(err.value)
    (root / "dup_task" / "task.toml").write_text(
        (root / "dup_task" / "task.toml").read_text() + 'for = "scorer"\n')
    with pytest.raises(TaskSpecError, match="two assets are named 'a'"):
        load_task("dup_task", root=root)


def test_the_seven_tasks_declare_their_assets(tmp_path):
    from tasks.api import list_tasks

    specs = {s.name: s for s in list_tasks()}
    assert len(specs) == 7
    for s in specs.values():
        assert s.assets_for("full"), f"{s.name} declares no full-scale asset"
        assert not s.assets_for("smoke"), f"{s.name}: smoke scale needs no download"
        for a in s.assets:
            assert a.pinned or a.revision == "main", (s.name, a.name)
    repos = {a.repo for s in specs.values() for a in s.assets}
    assert {"microsoft/phi-2", "AlgorithmicResearchGroup/minipile",
            "AlgorithmicResearchGroup/babylm", "AlgorithmicResearchGroup/edge_llm_training",
            "AlgorithmicResearchGroup/llm_merging", "meta-llama/Llama-2-7b-hf"} <= repos
    llama = next(a for a in specs["llm_merging"].assets if a.repo == "meta-llama/Llama-2-7b-hf")
    assert llama.pinned and llama.gated


def test_cli_errors_are_one_line_without_a_traceback(tmp_path, hub):
    env = cli_env(tmp_path, hub, tmp_path / "no-tasks")
    proc = mlrb(env, "assets", "fetch", check=False)
    assert proc.returncode != 0 and "name a task, or pass --all" in proc.stderr
    proc = mlrb(env, "assets", "list", "no_such_task", check=False)
    assert proc.returncode != 0 and "unknown task 'no_such_task'" in proc.stderr
    proc = mlrb(env, "assets", "import", str(tmp_path / "x.tar"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    proc = mlrb(env, "assets", "import", str(tmp_path / "junk.tar"), check=False)
    assert proc.returncode != 0 and "not an assets export" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----- the command line, as a user runs it

def cli_env(tmp_path: Path, hub: StandInHub, tasks_root: Path) -> dict[str, str]:
    env = {**os.environ, "MLRB_HOME": str(tmp_path / "cli-home"), "MLRB_TASKS_PATH": str(tasks_root),
           "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    return env


def mlrb(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", *args], env=env, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlrb {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# ----- mounting: a sandbox gets its task's staged repositories read-only, the hub offline

PROBE = r"""
import json, os, sys
from huggingface_hub import hf_hub_download, snapshot_download
out = {"cache": os.environ.get("HF_HUB_CACHE"), "offline": os.environ.get("HF_HUB_OFFLINE"),
       "repos": sorted(os.listdir(os.environ["HF_HUB_CACHE"]))}
cfg = hf_hub_download("org/tiny-model", "config.json")  # as the prompt calls it: no cache_dir
out["hidden_size"] = json.load(open(cfg))["hidden_size"]
data = snapshot_download("org/tiny-data", repo_type="dataset")
out["train_rows"] = sum(1 for _ in open(os.path.join(data, "data/train.jsonl")))
try:
    snapshot_download("org/heldout", repo_type="dataset")
    out["heldout"] = "reached"
except Exception as exc:
    out["heldout"] = type(exc).__name__
out["mount_opts"] = {f[1]: f[3].split(",")[0] for f in (ln.split() for ln in open("/proc/self/mounts"))
                     if f[1].startswith("/opt/mlrb/hub/")} if os.path.exists("/proc/self/mounts") else {}
print(json.dumps(out))
"""


def staged_with_a_neighbour(tmp_path: Path, hub: StandInHub, weights: bytes) -> tuple[Path, Path]:
    """The standard task staged in a home that also holds another task's repository."""
    commits = tiny_repos(hub, weights)
    hub.add("model", "org/other-model", {"config.json": b"{}"})
    root = standard_task(tmp_path / "tasks", commits)
    write_task(root, "other_task", """
[[assets]]
name = "other"
kind = "model"
repo = "org/other-model"
revision = "main"
pinned = false
size_bytes = 100
for = "agent"
""")
    home = tmp_path / "home"
    s = store(home, hub)
    s.fetch(items_of(root) + items_of(root, "other_task"))
    return root, home


def test_asset_mounts_give_each_side_only_its_tasks_repositories(tmp_path, hub, model_bytes):
    from runner.assets import DATASETS_INSIDE, HUB_INSIDE, asset_env, asset_mounts, asset_scratch

    root, home = staged_with_a_neighbour(tmp_path, hub, model_bytes)
    spec = load_task("assets_task", root=root)
    agent = asset_mounts(spec, "full", home)
    hub_dir = home / "assets" / "agent" / "hub"
    # a dataset comes twice: its snapshot, and the load_dataset cache built from it
    assert agent == ((hub_dir / "models--org--tiny-model", f"{HUB_INSIDE}/models--org--tiny-model"),
                     (hub_dir / "datasets--org--tiny-data", f"{HUB_INSIDE}/datasets--org--tiny-data"),
                     (home / "assets" / "agent" / "datasets" / "org___tiny-data",
                      f"{DATASETS_INSIDE}/org___tiny-data"))
    scorer = asset_mounts(spec, "full", home, audience="scorer")
    assert set(scorer) == {*agent, (home / "assets" / "scorer" / "hub" / "datasets--org--heldout",
                                    f"{HUB_INSIDE}/datasets--org--heldout"),
                           (home / "assets" / "scorer" / "datasets" / "org___heldout",
                            f"{DATASETS_INSIDE}/org___heldout")}
    assert not any("other-model" in inside for _host, inside in scorer)  # another task's repo
    assert dict(asset_env(agent)) == {"HF_HUB_CACHE": HUB_INSIDE, "HF_HUB_OFFLINE": "1",
                                      "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                      "HF_DATASETS_CACHE": DATASETS_INSIDE}
    assert asset_scratch(agent) == (DATASETS_INSIDE,)
    assert asset_mounts(spec, "smoke", home) == ()  # smoke scale needs nothing staged
    assert "HF_HUB_CACHE" not in dict(asset_env(()))


def test_a_missing_asset_is_a_clear_error_naming_the_fetch_command(tmp_path, hub, model_bytes):
    from runner.assets import MissingAssetsError, asset_mounts

    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    spec = load_task("assets_task", root=root)
    s = store(tmp_path / "home", hub)
    s.fetch([i for i in items_of(root) if i.asset.name != "heldout"])
    assert len(asset_mounts(spec, "full", tmp_path / "home")) == 3  # the agent's side is complete
    with pytest.raises(MissingAssetsError) as err:
        asset_mounts(spec, "full", tmp_path / "home", audience="scorer")
    msg = str(err.value)
    assert "heldout (org/heldout, missing)" in msg
    assert "run `mlrb assets fetch assets_task --scale full`" in msg


async def test_the_local_sandbox_reads_the_mounted_cache_offline(tmp_path, hub, model_bytes):
    from runner.assets import asset_env, asset_mounts
    from runner.local_sandbox import LocalSandbox
    from runner.sandbox import SandboxSpec

    root, home = staged_with_a_neighbour(tmp_path, hub, model_bytes)
    mounts = asset_mounts(load_task("assets_task", root=root), "full", home)
    sb = LocalSandbox(SandboxSpec(run="mounts-local", workspace=tmp_path / "ws",
                                  readonly_mounts=mounts, env=asset_env(mounts)))
    await sb.start()
    try:
        (tmp_path / "ws" / "probe.py").write_text(PROBE)
        res = await sb.exec("python3 probe.py", timeout_s=120)
    finally:
        await sb.stop()
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["repos"] == ["datasets--org--tiny-data", "models--org--tiny-model"]
    assert out["hidden_size"] == 8 and out["train_rows"] == 500
    assert out["heldout"] != "reached" and out["offline"] == "1"
    assert not sb.view.exists()  # the links are gone with the sandbox; the staged copy stays
    assert (home / "assets" / "agent" / "hub" / "models--org--tiny-model").is_dir()


@pytest.mark.docker
async def test_the_docker_sandbox_mounts_the_cache_read_only(tmp_path, hub, model_bytes, docker_client):
    from runner.assets import asset_env, asset_mounts
    from runner.docker_sandbox import DockerSandbox
    from runner.image import build_image
    from runner.sandbox import SandboxSpec

    image = build_image(log=lambda line: None, client=docker_client)
    root, home = staged_with_a_neighbour(tmp_path, hub, model_bytes)
    mounts = asset_mounts(load_task("assets_task", root=root), "full", home)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "probe.py").write_text(PROBE)
    sb = DockerSandbox(SandboxSpec(run=f"mounts-{os.getpid()}", workspace=tmp_path / "ws", image=image,
                                   readonly_mounts=mounts, env=asset_env(mounts)), client=docker_client)
    await sb.start()
    try:
        res = await sb.exec("python3 probe.py", timeout_s=120)
    finally:
        await sb.stop()
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["cache"] == "/opt/mlrb/hub"
    assert out["repos"] == ["datasets--org--tiny-data", "models--org--tiny-model"]
    assert out["hidden_size"] == 8 and out["train_rows"] == 500
    assert out["heldout"] != "reached"
    # read-only: the agent cannot change the staged copy
    assert out["mount_opts"] == {"/opt/mlrb/hub/datasets--org--tiny-data": "ro",
                                 "/opt/mlrb/hub/models--org--tiny-model": "ro"}


HELDOUT_SCORER = r"""
import json, os
from huggingface_hub import snapshot_download
held = snapshot_download("org/heldout", repo_type="dataset")
rows = sum(1 for _ in open(os.path.join(held, "test.jsonl")))
print(json.dumps({"metric": "m", "value": rows, "details": {"cache": os.environ["HF_HUB_CACHE"]}}))
"""


def run_harness(tmp_path: Path, root: Path, home: Path, plan: list[dict]) -> tuple[Any, Any]:
    from runner.agents.base import ScriptedAgent
    from runner.journal import Journal
    from runner.sandbox_factory import create_sandbox
    from runner.supervisor import RunRequest, RunSupervisor

    spec = load_task("assets_task", root=root)
    (spec.dir / "prompt.md").write_text("Train on what is staged.\n")
    (spec.dir / "scorer").mkdir(exist_ok=True)
    (spec.dir / "scorer" / "score.py").write_text(HELDOUT_SCORER)
    journal = Journal(tmp_path / "j.db")
    sup = RunSupervisor(
        RunRequest(run="assets-1", task=spec, scale="full", agent_kind="scripted"),
        journal=journal, publish=None, make_sandbox=lambda s: create_sandbox(s, backend="local"),
        agent=ScriptedAgent(plan), workspace=tmp_path / "run" / "workspace", runner_id="test",
        asset_home=home)
    return sup, journal


def journal_events(path: Path) -> list[Any]:
    from runner.journal import JournalReader

    r = JournalReader(path)
    try:
        return r.events("assets-1", 0, 100000)
    finally:
        r.close()


async def test_a_full_scale_run_sees_its_assets_and_the_scorer_its_heldout_set(tmp_path, hub, model_bytes):
    root, home = staged_with_a_neighbour(tmp_path, hub, model_bytes)
    plan = [{"name": "write_file", "args": {"path": "probe.py", "content": PROBE}},
            {"name": "bash", "args": {"command": "python3 probe.py && mkdir -p model", "timeout_s": 120}},
            {"name": "submit", "args": {"path": "model", "summary": "probe"}}]
    sup, journal = run_harness(tmp_path, root, home, plan)
    try:
        assert await sup.run() == "succeeded", sup.end_reason
    finally:
        journal.close()
    evs = journal_events(tmp_path / "j.db")
    out = "".join(e.data["text"] for e in evs if e.kind == "sandbox.output")
    probe = json.loads(next(ln for ln in out.splitlines() if ln.startswith('{"cache"')))
    assert probe["repos"] == ["datasets--org--tiny-data", "models--org--tiny-model"]
    assert probe["hidden_size"] == 8 and probe["heldout"] != "reached"
    score = next(e for e in evs if e.kind == "score")
    assert score.data["value"] == 20  # the scorer read the held-out set the agent could not


async def test_a_full_scale_run_with_an_asset_missing_fails_before_its_sandbox_starts(tmp_path, hub, model_bytes):
    commits = tiny_repos(hub, model_bytes)
    root = standard_task(tmp_path / "tasks", commits)
    s = store(tmp_path / "home", hub)
    s.fetch([i for i in items_of(root) if i.asset.name != "tiny-model"])
    sup, journal = run_harness(tmp_path, root, tmp_path / "home", [])
    try:
        assert await sup.run() == "failed"
    finally:
        journal.close()
    evs = journal_events(tmp_path / "j.db")
    assert "sandbox.started" not in [e.kind for e in evs]
    reason = evs[-1].data["reason"]
    assert evs[-1].kind == "run.ended" and "tiny-model (org/tiny-model, missing)" in reason
    assert "`mlrb assets fetch assets_task --scale full`" in reason


async def test_the_engine_refuses_a_full_scale_job_whose_assets_are_missing(tmp_path, monkeypatch):
    from runner.config import Config
    from runner.engine import Engine, Job, SubmitError

    root = write_task(tmp_path / "tasks", "unstaged_task", """
[[assets]]
name = "weights"
kind = "model"
repo = "org/weights"
revision = "main"
pinned = false
size_bytes = 1000
for = "agent"
""")
    (root / "unstaged_task" / "prompt.md").write_text("Nothing.\n")
    (root / "unstaged_task" / "baseline.py").write_text("def plan(scale):\n    return []\n")
    monkeypatch.setenv("MLRB_TASKS_PATH", str(root))
    engine = Engine(Config(home=tmp_path / "h", backend="local"), use_bus=False)
    await engine.start()
    try:
        with pytest.raises(SubmitError) as err:
            await engine.submit(Job(task="unstaged_task", scale="full"))
        assert "weights (org/weights, missing)" in str(err.value)
        assert "`mlrb assets fetch unstaged_task --scale full`" in str(err.value)
        assert not engine.supervisors  # refused: no run was started
    finally:
        await engine.stop()


def test_files_of_one_content_share_a_blob_and_all_are_staged(tmp_path, hub):
    body = b'{"text": "same"}\n' * 10
    d = hub.add("dataset", "org/twins", {"data/train.jsonl": body, "data/validation.jsonl": body})
    root = write_task(tmp_path / "tasks", "twins_task", f"""
[[assets]]
name = "twins"
kind = "dataset"
repo = "org/twins"
revision = "{d.commit}"
size_bytes = 1000
for = "agent"
""")
    home = tmp_path / "home"
    [state] = store(home, hub).fetch(items_of(root, "twins_task"))
    assert state.status == "present" and state.files_present == 2
    snap = state.path / "snapshots" / d.commit / "data"
    assert (snap / "train.jsonl").read_bytes() == (snap / "validation.jsonl").read_bytes() == body
    assert len(list((state.path / "blobs").iterdir())) == 1
