"""Turn `--model PATH_OR_HUB_ID` (or nothing) into a local checkpoint folder.

- a folder: used as it is (it must hold config.json);
- a hub id (`org/name`): downloaded from the Hugging Face Hub, or taken from the local hub cache when offline;
- nothing: the default model from the local cache or the hub when reachable, else the demo checkpoint (built once
  into --demo-dir; its weights are random, and everything that serves it says so).

A model that was asked for by name is never silently replaced by the demo checkpoint: that is a ResolveError.
A download shows huggingface_hub's own progress bars on stderr.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

DEFAULT_MODEL = "OpenGVLab/InternVL3-1B-hf"  # transformers-native format; ~2 GB; runs on CPU and on any GPU
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ResolveError(RuntimeError):
    pass


def is_random(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "config.json").read_text()).get("random_weights"))
    except (OSError, ValueError):
        return False


def local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ResolveError(f"{path} is not a folder")
    if not (path / "config.json").is_file():
        raise ResolveError(f"{path} holds no config.json, so it is not a checkpoint folder (expected a "
                           "transformers-format InternVL checkpoint)")
    return path.resolve()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    if hub_offline():
        return False
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(endpoint, timeout=timeout_s)
        return True
    except httpx.HTTPError:
        return False


def _hub_cache() -> Path:
    """huggingface_hub's cache folder, worked out as it does, without importing it (a second on a busy machine)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def from_hub(repo_id: str, download: bool) -> Path:
    """The snapshot from the local cache, or downloaded when `download`."""
    if not download and not (_hub_cache() / f"models--{repo_id.replace('/', '--')}").is_dir():
        raise ResolveError(f"could not get '{repo_id}' from the local hub cache (the hub is not reachable): not in "
                           f"{_hub_cache()}. Download it elsewhere and pass its folder: --model /path/to/checkpoint")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=not download))
    except Exception as exc:  # the hub library raises many types (offline, not found, gated, ...)
        where = "the Hugging Face Hub" if download else "the local hub cache (the hub is not reachable)"
        reason = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
        raise ResolveError(f"could not get '{repo_id}' from {where}: {reason}. Download it elsewhere and pass its "
                           "folder: --model /path/to/checkpoint") from None


def resolve(model: str | None, demo_dir: Path) -> tuple[Path, bool]:
    """(folder, random_weights)."""
    if model:
        path = Path(model).expanduser()
        if path.exists() or not HUB_ID.match(model):
            if not path.exists():
                raise ResolveError(f"--model {model}: no such folder, and not a hub id like '{DEFAULT_MODEL}'")
            folder = local_folder(path)
        else:
            print(f"==> fetching {model} from the Hugging Face Hub (or its local cache) ...", file=sys.stderr)
            folder = from_hub(model, download=hub_reachable())
        return folder, is_random(folder)
    try:
        return from_hub(DEFAULT_MODEL, download=False), False
    except ResolveError:
        pass
    if hub_reachable():
        print(f"==> no model given; downloading the default {DEFAULT_MODEL} ...", file=sys.stderr)
        try:
            return from_hub(DEFAULT_MODEL, download=True), False
        except ResolveError as exc:
            print(f"==> {exc}", file=sys.stderr)
    from workers.demo_checkpoint import ensure_demo_checkpoint

    folder, built = ensure_demo_checkpoint(demo_dir)
    print(f"==> no model given and none available (no hub, nothing cached): "
          f"{'built' if built else 'reusing'} the demo checkpoint in {folder}", file=sys.stderr)
    return Path(folder).resolve(), True
