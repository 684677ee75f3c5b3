"""A threaded HTTP server on loopback that plays an SMS or voice gateway."""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Gateway:
    """A threaded HTTP server on loopback: answers ``status`` (or never, for
    "hang"), and records each request's path and body."""
    status: int | str = 200
    received: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self):
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                gateway.received.append((self.path, body))
                if gateway.status == "hang":
                    time.sleep(10)          # the client gives up long before
                    return
                self.send_response(int(gateway.status))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/send"

    def codes(self) -> list[str]:
        return [json.loads(body)["code"] for _, body in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
