"""A minimal Hugging Face hub: the API subset huggingface_hub's model_info and hf_hub_download use.

Run as a real server process: `python tests/fakehub.py ROOT PORT [CHUNK_DELAY]`. ROOT/<org>/<name>/
holds each repo's files; *.safetensors are served as LFS files (sha256 known up front), the rest as
plain git files. Unknown repos answer 404 with X-Error-Code: RepoNotFound, as the hub does.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 * 1024


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub(BaseHTTPRequestHandler):
    root: Path
    delay: float = 0.0

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def _repo(self, org: str, name: str) -> Path | None:
        path = self.root / org / name
        return path if path.is_dir() else None

    def _not_found(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Type", "application/json")
        body = b'{"error":"Repository not found"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._info(parts[2], parts[3])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(parts[0], parts[1], "/".join(parts[4:]))
        self._not_found()

    do_HEAD = do_GET

    def _info(self, org: str, name: str) -> None:
        repo = self._repo(org, name)
        if repo is None:
            return self._not_found()
        siblings = []
        for f in sorted(p for p in repo.iterdir() if p.is_file()):
            data = f.read_bytes()
            entry = {"rfilename": f.name, "size": len(data), "blobId": _git_sha1(data)}
            if f.suffix == ".safetensors":
                entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                "pointerSize": 134}
            siblings.append(entry)
        body = json.dumps({"id": f"{org}/{name}", "modelId": f"{org}/{name}", "sha": COMMIT,
                           "private": False, "siblings": siblings}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, org: str, name: str, filename: str) -> None:
        repo = self._repo(org, name)
        path = repo / filename if repo else None
        if path is None or not path.is_file():
            return self._not_found()
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        lfs = path.suffix == ".safetensors"
        etag = hashlib.sha256(data).hexdigest() if lfs else _git_sha1(data)
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        if lfs:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if self.command == "HEAD":
            return
        for i in range(start, len(data), CHUNK):
            self.wfile.write(data[i:i + CHUNK])
            if self.delay:
                time.sleep(self.delay)


def main() -> None:
    Hub.root = Path(sys.argv[1])
    Hub.delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Hub).serve_forever()


if __name__ == "__main__":
    main()
