"""A stand-in for the Hugging Face hub's HTTP API on a loopback port, so the real
`huggingface_hub` client runs against it (HF_ENDPOINT / endpoint=).

It speaks what `snapshot_download` and `hf_hub_download` call (huggingface_hub 2.x):
  GET  /api/{models|datasets}/{org}/{name}/revision/{rev}     repo info, its `sha`
  GET  /api/{models|datasets}/{org}/{name}/tree/{rev}[/path]  the recursive listing (oid, size, lfs)
  HEAD /{org}/{name}/resolve/{rev}/{file}                     X-Repo-Commit, ETag, X-Linked-*
  GET  /{org}/{name}/resolve/{rev}/{file}                     the bytes, with Range
  (datasets: the same under /datasets/...)
A gated repo's files answer 401 with X-Error-Code: GatedRepo unless the right bearer token is sent.
Faults on demand: drop the connection halfway through a file once; serve other bytes than the
listing says (a corrupted transfer).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


def git_oid(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324 - git's id


@dataclass
class Repo:
    kind: str  # "model" | "dataset"
    repo_id: str
    files: dict[str, bytes]
    lfs: set[str]
    commit: str
    branch: str = "main"
    token: str | None = None  # gated: this bearer token is needed

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs else git_oid(data)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class StandInHub:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    drop_once: set[str] = field(default_factory=set)  # file paths whose first full GET is cut halfway
    serve_instead: dict[str, bytes] = field(default_factory=dict)  # file path -> bytes sent instead
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, repo_id: str, files: dict[str, bytes], *, lfs: tuple[str, ...] = (),
            token: str | None = None) -> Repo:
        digest = hashlib.sha1(repo_id.encode())  # noqa: S324 - a stand-in commit id
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        repo = Repo(kind, repo_id, dict(files), set(lfs), digest.hexdigest(), token=token)
        self.repos[(kind, repo_id)] = repo
        return repo

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandInHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def gets(self, path_suffix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_suffix)]


_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^(?:/(datasets))?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: StandInHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.record(Request(self.command, path, self.headers.get("Range"),
                                self.headers.get("Authorization")))
        if m := _API.match(path):
            kinds, repo_id, what, rev, _sub = m.groups()
            # a gated repo's metadata is public on the hub; only its files need the token
            repo = self._repo(kinds[:-1], repo_id, rev, files=False)
            if repo is None:
                return
            if what == "revision":
                return self._json({"id": repo.repo_id, "sha": repo.commit, "private": False,
                                   "gated": "manual" if repo.token else False,
                                   "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
            return self._json(self._tree(repo))
        if m := _RESOLVE.match(path):
            dataset, repo_id, rev, file = m.groups()
            repo = self._repo("dataset" if dataset else "model", repo_id, rev)
            if repo is None:
                return
            if file not in repo.files:
                return self._error(404, "EntryNotFound", f"{file} does not exist", repo)
            return self._file(repo, file, head=head)
        self._error(404, "RepoNotFound", "not found", None)

    def _repo(self, kind: str, repo_id: str, rev: str, files: bool = True) -> Repo | None:
        repo = self.hub.repos.get((kind, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", None)
            return None
        if files and repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo", f"Access to {kind} {repo_id} is restricted. You must have "
                        "access to it and be authenticated to access it. Please log in.", repo)
            return None
        if rev not in (repo.commit, repo.branch):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", repo)
            return None
        return repo

    def _tree(self, repo: Repo) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        folders = sorted({"/".join(p.split("/")[:i]) for p in repo.files
                          for i in range(1, p.count("/") + 1)})
        for d in folders:
            out.append({"type": "directory", "path": d, "oid": git_oid(d.encode()), "size": 0})
        for p in sorted(repo.files):
            data = repo.files[p]
            entry: dict[str, Any] = {"type": "file", "path": p, "size": len(data), "oid": git_oid(data)}
            if p in repo.lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": 134}
            out.append(entry)
        return out

    def _file(self, repo: Repo, file: str, *, head: bool) -> None:
        data = self.hub.serve_instead.get(file, repo.files[file])
        start = 0
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-(\d*)$", rng)):
            start = int(m.group(1))
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{repo.etag(file)}"')
        if file in repo.lfs:
            self.send_header("X-Linked-Etag", f'"{repo.etag(file)}"')
            self.send_header("X-Linked-Size", str(len(repo.files[file])))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        with self.hub._lock:
            drop = file in self.hub.drop_once and not start
            if drop:
                self.hub.drop_once.discard(file)
        if drop:
            # half the body, then the connection goes away: the client sees a short read
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def _json(self, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, repo: Repo | None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
