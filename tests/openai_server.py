"""A small OpenAI-compatible chat-completions server for tests, on 127.0.0.1: ``GET /v1/models`` and
``POST /v1/chat/completions``, answered by a Python function of the request's user message.

For failure tests it can answer the next requests with chosen statuses (a 429, a 500), with a body that is not JSON,
or not at all (accept the connection, read the request, and never answer). It records every request's headers and
body and the most requests it ever had in flight at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY = "sk-test-judge-key-0123456789"


class JudgeState:
    def __init__(self, answer: Callable[[str], str], *, model: str = "judge-model", key: str | None = None) -> None:
        self.answer = answer
        self.model = model
        self.key = key
        #: The next chat requests are answered so, one entry each: ``(status, body)``; body ``None`` hangs.
        self.faults: list[tuple[int, bytes | None]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        #: Seconds each answer waits (to measure concurrency).
        self.delay = 0.0
        self.release = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    state: JudgeState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if code == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        if self.state.key is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {self.state.key}"

    def do_GET(self) -> None:
        if not self._authorized():
            return self._send(401, json.dumps({"error": {"message": "bad key", "type": "auth"}}).encode())
        if self.path.rstrip("/") == "/v1/models":
            body = {"object": "list", "data": [{"id": self.state.model, "object": "model", "owned_by": "test"}]}
            return self._send(200, json.dumps(body).encode())
        return self._send(404, b'{"error": {"message": "no route"}}')

    def do_POST(self) -> None:
        st = self.state
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        with st.lock:
            st.requests.append(request)
            st.headers.append(dict(self.headers))
            fault = st.faults.pop(0) if st.faults else None
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            if not self._authorized():
                return self._send(401, json.dumps({"error": {"message": "bad key", "type": "auth"}}).encode())
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, b'{"error": {"message": "no route"}}')
            if fault is not None:
                status, body = fault
                if body is None:  # accept and never answer
                    st.release.wait(30)
                    return
                return self._send(status, body)
            if request.get("model") != st.model:
                return self._send(404, json.dumps({"error": {"message": "model not found"}}).encode())
            if st.delay:
                time.sleep(st.delay)
            user = request["messages"][-1]["content"]
            reply = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": st.model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": st.answer(user)}, "finish_reason": "stop"}
                ],
            }
            return self._send(200, json.dumps(reply).encode())
        finally:
            with st.lock:
                st.in_flight -= 1


class JudgeServer:
    """``with JudgeServer(answer) as server: server.url``."""

    def __init__(self, answer: Callable[[str], str], **kwargs: Any) -> None:
        self.state = JudgeState(answer, **kwargs)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.state.release.set()
        self.server.shutdown()
        self.server.server_close()
