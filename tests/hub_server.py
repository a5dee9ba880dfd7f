"""A small Hub-compatible HTTP server for tests: the routes huggingface_hub's client uses to create a repo, upload
(preupload, LFS batch + PUT, NDJSON commit), list, inspect and download. In memory, on 127.0.0.1.

Like the Hub it checks ``parentCommit`` (412 when the branch moved). For failure tests it can crash in the middle of
an LFS upload (the listening socket closes and the upload connection is reset) and be restarted on the same port with
the same storage, and it can answer one chosen route with a chosen status."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

TOKEN = "hf_test_token"


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha -> {path: ("lfs"|"git", bytes)}


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.commit_count = 0
        self.lock = threading.Lock()
        #: Crash while receiving the next LFS upload, half-way through its body.
        self.crash_during_upload = False
        #: ``{"commit": [(status, error_code), ...]}``: answer the next commit requests so, one entry each.
        self.faults: dict[str, list[tuple[int, str]]] = {}
        #: Called as ``hook(repo_id, branch)`` just before a commit is applied (to simulate a concurrent writer).
        self.before_commit: Any = None
        self.requests: list[tuple[str, str]] = []
        #: Bytes of file content served by ``/resolve/`` (GET), per repository.
        self.bytes_served: dict[str, int] = {}
        #: Tracebacks of handler failures (a test fixture asserts there are none, unless the server crashed).
        self.errors: list[str] = []
        self.crashed = False

    def fault(self, route: str) -> tuple[int, str] | None:
        queue = self.faults.get(route)
        return queue.pop(0) if queue else None

    def commit(self, repo_id: str, rev: str, files: dict[str, tuple[str, bytes]], summary: str) -> str:
        """Record a commit on ``rev`` (under ``lock``) and return its sha."""
        self.commit_count += 1
        sha = hashlib.sha1(f"{repo_id}{self.commit_count}{summary}".encode()).hexdigest()
        self.repos[repo_id].commits[sha] = files
        self.repos[repo_id].branches[rev] = sha
        return sha

    def add_dataset(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main") -> str:
        """Commit ``files`` (all LFS) to the dataset ``repo_id`` on ``branch``; returns the commit."""
        with self.lock:
            key = f"datasets/{repo_id}"
            self.repos.setdefault(key, Repo())
            return self.commit(key, branch, {p: ("lfs", data) for p, data in files.items()}, f"add {sorted(files)}")

    def files(self, repo_id: str, rev: str) -> tuple[str, dict[str, tuple[str, bytes]]]:
        repo = self.repos[repo_id]
        sha = repo.branches.get(rev, rev)
        return sha, repo.commits[sha]


def _key(kind: str, repo_id: str) -> str:
    """Where a repository lives in :attr:`HubState.repos`: a model by its id, a dataset as ``datasets/OWNER/NAME``."""
    return repo_id if kind == "models" else f"datasets/{repo_id}"


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    # ---------------------------------------------------------------- helpers
    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, code: int, message: str, error_code: str = "") -> None:
        headers = {"X-Error-Message": message}
        if error_code:
            headers["X-Error-Code"] = error_code
        self._json(code, {"error": message}, headers)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {TOKEN}"

    # ---------------------------------------------------------------- routes
    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.connections.discard(self.connection)  # type: ignore[attr-defined]
        try:
            super().finish()
        except (OSError, ValueError):
            pass  # the connection was reset by a crash

    def _crash(self) -> None:
        """Die like a server process would: stop listening at once, and reset every open connection (this upload
        and the client's idle keep-alive ones) without an answer."""
        server = self.server
        self.state.crashed = True
        server.socket.close()
        for connection in list(server.connections):  # type: ignore[attr-defined]
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        threading.Thread(target=server.shutdown, daemon=True).start()
        self.close_connection = True

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        body = self._body()
        st = self.state
        st.requests.append(("POST", path))
        if path == "/api/repos/create":
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo_id.startswith("forbidden/"):
                return self._error(403, "You don't have the rights to create a model under this namespace")
            with st.lock:
                if repo_id in st.repos:  # the real Hub answers 409 with the repo URL; exist_ok relies on it
                    url = f"http://{self.headers['Host']}/{repo_id}"
                    return self._json(409, {"error": "You already created this model repo", "url": url})
                sha = hashlib.sha1(repo_id.encode()).hexdigest()
                st.repos[repo_id] = Repo(private=bool(data.get("private")), branches={"main": sha}, commits={sha: {}})
            return self._json(200, {"url": f"http://{self.headers['Host']}/{repo_id}"})
        if path == "/api/validate-yaml":  # the client validates a README's YAML front matter before committing it
            import yaml

            content = json.loads(body)["content"]
            front = content.split("---", 2)[1] if content.startswith("---") else ""
            if not isinstance(yaml.safe_load(front) or {}, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
            return self._json(200, {"warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
        if m:
            if m.group(1) not in st.repos:
                return self._error(404, "Repository not found", "RepoNotFound")
            files = json.loads(body)["files"]
            out = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs"
                    if f["path"].endswith((".safetensors", ".png")) or f["size"] > 10_000_000
                    else "regular",
                    "shouldIgnore": False,
                }
                for f in files
            ]
            return self._json(200, {"files": out})
        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m:
            if not self._authorized():
                return self._error(401, "Invalid credentials")
            objects = []
            host = self.headers["Host"]
            for obj in json.loads(body)["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in st.lfs:
                    entry["actions"] = {"upload": {"href": f"http://{host}/lfs-upload/{obj['oid']}"}}
                objects.append(entry)
            return self._json(200, {"transfer": "basic", "objects": objects})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
        if m:
            if not self._authorized():
                return self._error(401, "Invalid credentials")
            repo_id, rev = m.group(1), unquote(m.group(2))
            fault = st.fault("commit")
            if fault:
                return self._error(fault[0], f"injected {fault[0]}", fault[1])
            if st.before_commit is not None:
                st.before_commit(repo_id, rev)
            if repo_id not in st.repos:
                return self._error(404, "Repository not found", "RepoNotFound")
            if rev not in st.repos[repo_id].branches:
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            with st.lock:
                head, files = st.files(repo_id, rev)
                files = dict(files)
                summary = ""
                for line in body.splitlines():
                    item = json.loads(line)
                    key, value = item["key"], item["value"]
                    if key == "header":
                        summary = value.get("summary", "")
                        parent = value.get("parentCommit")
                        if parent and parent != head:
                            return self._error(
                                412, f"A commit has happened since. Please refresh and try again. ({parent} != {head})"
                            )
                    elif key == "file":
                        files[value["path"]] = ("git", base64.b64decode(value["content"]))
                    elif key == "lfsFile":
                        if value["oid"] not in st.lfs:
                            return self._error(400, f"LFS object {value['oid']} was never uploaded")
                        files[value["path"]] = ("lfs", st.lfs[value["oid"]])
                    elif key in ("deletedFile", "deletedFolder"):
                        files = {
                            p: f
                            for p, f in files.items()
                            if p != value["path"] and not p.startswith(value["path"].rstrip("/") + "/")
                        }
                sha = st.commit(repo_id, rev, files, summary)
            host = self.headers["Host"]
            return self._json(
                200, {"commitOid": sha, "commitUrl": f"http://{host}/{repo_id}/commit/{sha}", "hookOutput": ""}
            )
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path)
        if m:
            repo = st.repos.get(m.group(1))
            if repo is None:
                return self._error(404, "Repository not found", "RepoNotFound")
            branch = unquote(m.group(2))
            if branch in repo.branches:
                return self._error(409, "Reference already exists")
            repo.branches[branch] = repo.branches["main"]
            return self._json(200, {})
        return self._error(404, f"no route {path}")

    def do_PUT(self) -> None:
        path = urlparse(self.path).path
        m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if not m:
            return self._error(404, "no route")
        self.state.requests.append(("PUT", path))
        if self.state.crash_during_upload:
            self.state.crash_during_upload = False
            self.rfile.read(int(self.headers["Content-Length"]) // 2)
            return self._crash()
        data = self._body()
        if hashlib.sha256(data).hexdigest() != m.group(1):
            return self._error(400, "checksum mismatch")
        self.state.lfs[m.group(1)] = data
        return self._send(200)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, head: bool) -> None:
        st = self.state
        parsed = urlparse(self.path)
        path = unquote(parsed.path)
        st.requests.append(("HEAD" if head else "GET", path))
        if path == "/api/whoami-v2":
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            return self._json(200, {"type": "user", "name": "me", "orgs": []})
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        if m:
            repo_id, rev = _key(m.group(1), m.group(2)), m.group(3) or "main"
            repo = st.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                return self._error(404, "Repository not found", "RepoNotFound")
            if rev not in repo.branches and rev not in repo.commits:
                return self._error(404, "Revision not found", "RevisionNotFound")
            sha, files = st.files(repo_id, rev)
            return self._json(
                200,
                {
                    "id": m.group(2),
                    "modelId": m.group(2),
                    "sha": sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "tags": [],
                },
            )
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            repo_id, rev = _key(m.group(1), m.group(2)), m.group(3)
            if repo_id not in st.repos:
                return self._error(404, "Repository not found", "RepoNotFound")
            _, files = st.files(repo_id, rev)
            entries = []
            for p, (kind, data) in sorted(files.items()):
                entry: dict[str, Any] = {"type": "file", "path": p, "size": len(data), "oid": git_oid(data)}
                if kind == "lfs":
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            return self._json(200, entries)
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo_id, rev, file_path = _key("datasets" if m.group(1) else "models", m.group(2)), m.group(3), m.group(4)
            if repo_id not in st.repos:
                return self._error(404, "Repository not found", "RepoNotFound")
            sha, files = st.files(repo_id, rev)
            if file_path not in files:
                return self._error(404, "Entry not found", "EntryNotFound")
            kind, data = files[file_path]
            etag = hashlib.sha256(data).hexdigest() if kind == "lfs" else git_oid(data)
            headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
            if kind == "lfs":
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
            if not head:
                st.bytes_served[repo_id] = st.bytes_served.get(repo_id, 0) + len(data)
            return self._send(200, data, headers, head=head)
        return self._error(404, f"no route {path}")


class _Server(ThreadingHTTPServer):
    state: HubState
    connections: set[socket.socket]

    def handle_error(self, request: Any, client_address: Any) -> None:
        import traceback

        self.state.errors.append(traceback.format_exc())


class HubServer:
    """``with HubServer() as hub:`` serves on ``hub.endpoint``; :meth:`restart` brings a crashed server back on the
    same port with the same storage."""

    def __init__(self) -> None:
        self.state = HubState()
        self._start(0)

    def _start(self, port: int) -> None:
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.httpd.state = self.state
        self.httpd.connections = set()
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.httpd.socket.fileno() != -1

    def restart(self) -> None:
        port = self.httpd.server_address[1]
        self.httpd.shutdown()
        self.httpd.server_close()
        self._start(port)

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
