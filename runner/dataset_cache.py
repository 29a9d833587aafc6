"""A staged dataset's `load_dataset` cache, built on the host from its hub snapshot.

With the hub offline, `datasets.load_dataset('org/name', config)` never reads the hub cache: it
reads only the Arrow cache an earlier load left under HF_DATASETS_CACHE
(`org___name/<config>/<version>/<hash>/`). So each staged dataset repository is loaded once here,
from its snapshot folder with the same data-file resolution the hub path uses (the dataset
card's `configs:`, else the split names in the file names), and written in that layout under
the repository's own id. Mounted read-only inside a writable HF_DATASETS_CACHE (the loader puts
its lock files there), the prompt's own `load_dataset` call and lm-eval's then work unchanged.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MARKER = ".mlrb-prepared.json"  # written last: a folder without it is never mounted


class DatasetCacheError(Exception):
    """A snapshot that `datasets` cannot load; the message is one line."""


def cache_folder(repo: str) -> str:
    """The folder `datasets` looks in for a hub dataset: org___name (name in snake case)."""
    from datasets.naming import camelcase_to_snakecase

    org, name = repo.split("/")
    return f"{org}___{camelcase_to_snakecase(name)}"


def _module(snapshot: Path) -> Any:
    from datasets.load import LocalDatasetModuleFactory

    return LocalDatasetModuleFactory(str(snapshot)).get_module()


def snapshot_configs(module: Any) -> list[str]:
    """The configs the dataset card declares, or ["default"] for a repository of plain files."""
    declared = module.builder_configs_parameters.metadata_configs or {}
    return list(declared) or ["default"]


def _prepare_config(module: Any, repo: str, config: str, work: Path) -> Path:
    from datasets.load import get_dataset_builder_class
    from datasets.naming import camelcase_to_snakecase

    kwargs: dict[str, Any] = dict(module.builder_kwargs)
    kwargs.pop("repo_id", None)  # a repo id would make the builder insist on hf:// data files
    kwargs.pop("dataset_name", None)
    name = camelcase_to_snakecase(repo.split("/")[1])
    configs = module.builder_configs_parameters
    known = configs.metadata_configs or {}
    config_name = config if known else (configs.default_config_name or None)
    info = module.dataset_infos.get(config) if module.dataset_infos else None
    builder = get_dataset_builder_class(module, dataset_name=name)(
        cache_dir=str(work), dataset_name=name, config_name=config_name, hash=module.hash,
        info=info, **kwargs)
    builder.download_and_prepare()
    return Path(builder.cache_dir)


def prepare(snapshot: Path, repo: str, configs: Iterable[str], dest: Path, commit: str) -> list[str]:
    """Build `dest` (the repository's folder under a HF_DATASETS_CACHE) from the snapshot, for
    each config named, or every config the card declares; replaces what was there. Returns the
    configs prepared."""
    wanted = list(configs)
    try:
        module = _module(snapshot)
        wanted = wanted or snapshot_configs(module)
        work = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
        built = work / "out"
        try:
            for config in wanted:
                done = _prepare_config(module, repo, config, work / "build")
                # the builder's folder is name/<config>/<version>/<hash>; keep it under org___name
                target = built.joinpath(*done.relative_to(work / "build").parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(done), str(target))
            for lock in built.rglob("*.lock"):
                lock.unlink()
            (built / MARKER).write_text(json.dumps({"repo": repo, "commit": commit,
                                                    "configs": wanted}) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            built.replace(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except DatasetCacheError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is the snapshot's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DatasetCacheError(f"{repo}: `datasets` cannot load the staged snapshot: "
                                f"{type(exc).__name__}: {first}") from None
    return wanted


def prepared_commit(dest: Path) -> str | None:
    """The commit a prepared folder was built from, or None when it is absent or unfinished."""
    try:
        return str(json.loads((dest / MARKER).read_text())["commit"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
