"""A real HTTP server on loopback that answers each request with the next scripted answer.

For answers the simulator cannot give (a header it never sends, a body no Kraken would): the
client under test still talks HTTP over a real socket.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

# (status, body) or (status, body, headers); a body that is not bytes is sent as JSON.
Answer = tuple[int, Any] | tuple[int, Any, Mapping[str, str]]


class ScriptedHttpServer:
    """Answers GET requests in order from `answers`; records each request's path and query."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.queries: list[tuple[str, dict[str, list[str]]]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                scripted.queries.append((url.path, parse_qs(url.query)))
                status, body, *rest = scripted.answers.pop(0)
                headers: Mapping[str, str] = rest[0] if rest else {}
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass  # the tests' output is not the place for an access log

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        """Stop serving and close the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedHttpServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
