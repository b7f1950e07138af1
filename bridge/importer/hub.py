"""Download a mapped model's Hugging Face repo into the state dir, as Ollama-style progress lines.

Lines (spec §1.5): `pulling manifest`; per file `pulling <digest12>` with digest/total/completed;
`verifying sha256 digest`; `writing manifest`; `success`. Failures raise PullError, which the
blueprint turns into a final `{"error": ...}` line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError
from bridge.routing.registry import IMPORTED_DIR

log = logging.getLogger(__name__)

# What mlx_lm.load reads; everything else in a repo (READMEs, images, other formats) is skipped.
WANTED_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".tiktoken", ".txt")
MANIFEST_FILE = "mlx_bridge_pull.json"
UNKNOWN_MODEL = "pull model manifest: file does not exist"  # the ollama CLI matches this text
_TICK = 0.25  # seconds between progress lines for one file
_JOIN = 60.0  # seconds a closed pull waits for its download thread to notice (one 10 MB read)


class PullError(BridgeError):
    """A pull failed; the message is the error line clients show."""


class _Cancelled(Exception):
    """Raised inside huggingface_hub's download loop once nobody reads the progress any more."""


@dataclass(frozen=True)
class RepoFile:
    name: str
    size: int
    sha256: str | None  # LFS files carry one; small git files are hashed after download


def fetch_manifest(repo: str) -> tuple[str, list[RepoFile]]:
    """(commit sha, wanted files) of a hub repo; PullError with a clear text when unreachable."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except OfflineModeIsEnabled:
        raise PullError("pull model manifest: the Hugging Face hub is unreachable in offline mode "
                        "(HF_HUB_OFFLINE is set)") from None
    except GatedRepoError:
        raise PullError(f"pull model manifest: {repo} is gated; accept its license on the hub and "
                        "log in with `hf auth login`") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise PullError(f"{UNKNOWN_MODEL} (no Hugging Face repo {repo})") from None
    except Exception as exc:  # network errors come as requests/httpx types depending on the version
        raise PullError(f"pull model manifest: cannot reach the Hugging Face hub: {exc}") from None
    files = []
    for s in info.siblings or []:
        if not s.rfilename.endswith(WANTED_SUFFIXES) or "/" in s.rfilename:
            continue
        sha = s.lfs.sha256 if s.lfs else None
        files.append(RepoFile(s.rfilename, int(s.size or (s.lfs.size if s.lfs else 0)), sha))
    if not any(f.name.endswith(".safetensors") for f in files):
        raise PullError(f"pull model manifest: {repo} has no safetensors weights "
                        "(not an MLX model)")
    return str(info.sha or ""), files


class Puller:
    """Runs pulls; one at a time per repo (a second pull of it waits for the first)."""

    def __init__(self, downloads_dir: Path) -> None:
        self.downloads_dir = downloads_dir
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, repo: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(repo, threading.Lock())

    def pull(self, repo: str) -> Iterator[dict[str, Any]]:
        """Progress lines for downloading `repo` into downloads_dir/<repo>."""
        yield {"status": "pulling manifest"}
        if repo.split("/", 1)[0].lower() == IMPORTED_DIR:  # that directory holds imports
            raise PullError(f"pull model manifest: cannot pull {repo}: '{IMPORTED_DIR}/' is where "
                            "mlx-bridge keeps imported models")
        commit, files = fetch_manifest(repo)
        with self._lock(repo):
            final = self.downloads_dir / repo
            partial = final.with_name(f".{final.name}.partial")  # kept: an interrupted pull resumes
            # disk full, read-only state dir: an error line; the model appears only when complete
            try:
                yield from self._fetch_all(repo, commit, files, partial, final)
            except OSError as exc:
                where = f": {exc.filename}" if exc.filename else ""
                raise PullError(f"pulling {repo} into {final.parent} failed: "
                                f"{exc.strerror or exc}{where}") from None
        log.info("model pulled repo=%s files=%d path=%s", repo, len(files), final)
        yield {"status": "success"}


    @staticmethod
    def _fetch_all(repo: str, commit: str, files: list[RepoFile], partial: Path,
                   final: Path) -> Iterator[dict[str, Any]]:
        partial.mkdir(parents=True, exist_ok=True)
        digests = {}
        for f in files:
            for line in _download(repo, commit, f, partial):
                digests[f.name] = line["digest"]
                yield line
        yield {"status": "verifying sha256 digest"}
        _verify(partial, files)
        yield {"status": "writing manifest"}
        _finish(repo, commit, files, digests, partial, final)


def _download(repo: str, commit: str, f: RepoFile, partial: Path) -> Iterator[dict[str, Any]]:
    """Lines for one file; LFS files report progress while they download."""
    if f.sha256 is None:
        try:
            _fetch(repo, commit, f.name, partial, lambda n: None)
        except Exception as exc:  # the same error line as for the weights (network or disk)
            raise PullError(f"pulling {f.name} from {repo} failed: {exc}") from None
        digest = "sha256:" + _sha256(partial / f.name)
        yield {"status": f"pulling {digest[7:19]}", "digest": digest, "total": f.size,
               "completed": f.size}
        return
    digest = "sha256:" + f.sha256
    status = f"pulling {f.sha256[:12]}"
    yield {"status": status, "digest": digest, "total": f.size}
    updates: queue.Queue[int | BaseException | None] = queue.Queue()
    cancel = threading.Event()

    def report(count: int) -> None:
        if cancel.is_set():  # the client went away: stop at this chunk
            raise _Cancelled
        updates.put(count)

    def work() -> None:
        try:
            _fetch(repo, commit, f.name, partial, report)
            updates.put(None)
        except BaseException as exc:  # handed to the streaming thread, which raises it
            updates.put(exc)

    thread = threading.Thread(target=work, name=f"pull-{f.name}", daemon=True)
    thread.start()
    try:
        yield from _progress(updates, f, status, digest, repo)
    finally:  # also when the response is closed early (GeneratorExit): end the download
        cancel.set()
        thread.join(_JOIN)  # before the repo lock is released: no two writers of one file
        if thread.is_alive():
            log.warning("pull download still running after the client left repo=%s file=%s",
                        repo, f.name)


def _progress(updates: queue.Queue[int | BaseException | None], f: RepoFile, status: str,
              digest: str, repo: str) -> Iterator[dict[str, Any]]:
    """Progress lines from the download thread's byte counts, at most one per tick."""
    last_sent, sent = 0.0, -1
    while True:
        item = updates.get()
        while not updates.empty() and isinstance(item, int):  # keep only the newest count
            item = updates.get()
        if isinstance(item, BaseException):
            raise PullError(f"pulling {f.name} from {repo} failed: {item}") from None
        if item is None:
            break
        if time.monotonic() - last_sent >= _TICK:
            last_sent, sent = time.monotonic(), min(item, f.size)
            yield {"status": status, "digest": digest, "total": f.size, "completed": sent}
    if sent != f.size:
        yield {"status": status, "digest": digest, "total": f.size, "completed": f.size}


def _fetch(repo: str, commit: str, name: str, partial: Path, report: Any) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo, name, revision=commit or None, local_dir=partial,
                    tqdm_class=_bar_class(report))


def _bar_class(report: Any) -> type:
    """A silent tqdm that forwards the downloaded byte count to `report`."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.seen = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            self.seen += int(n or 0)
            report(self.seen)
            return None

    return _Bar


def _verify(partial: Path, files: list[RepoFile]) -> None:
    for f in files:
        if f.sha256 is None:
            continue
        got = _sha256(partial / f.name)
        if got != f.sha256:
            (partial / f.name).unlink(missing_ok=True)
            raise PullError(f"digest mismatch, file must be downloaded again: {f.name} "
                            f"want sha256:{f.sha256}, got sha256:{got}")


def _finish(repo: str, commit: str, files: list[RepoFile], digests: dict[str, str],
            partial: Path, final: Path) -> None:
    """Write our manifest and swap the complete directory into place by renames."""
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
    manifest = {"repo": repo, "commit": commit,
                "files": [{"name": f.name, "size": f.size, "digest": digests[f.name]}
                          for f in files]}
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()
