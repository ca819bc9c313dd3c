"""The node's kubelet endpoint, for logs only, so `kubectl logs` (the API server's pods/log) works.

The API server proxies pods/log to ``https://<node address>:<kubeletEndpoint port>/containerLogs/<namespace>/
<pod>/<container>``; ``LogServer`` answers that one path from the runner's log files: ``follow=true``
streams until the container's process ends, ``tailLines`` and ``limitBytes`` are honoured, ``timestamps``
and ``sinceSeconds`` are not (the files carry no timestamps). Everything else is 404. The API server does
not verify a kubelet's serving certificate unless told to (``--kubelet-certificate-authority``), so the
certificate is self-signed.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from .certs import CertificateAuthority

FindLog = Callable[[str, str, str], Path | None]
"""(namespace, pod, container) -> its log file, None when the container never ran here."""
IsRunning = Callable[[str, str, str], bool]
"""(namespace, pod, container) -> whether its process may still write to the log."""
FOLLOW_POLL = 0.2


def tail(data: bytes, lines: int | None, limit: int | None) -> bytes:
    """The last `lines` lines of `data`, then at most `limit` bytes (kubectl logs --tail, --limit-bytes)."""
    if lines is not None:
        kept = data.splitlines(keepends=True)
        data = b"".join(kept[-lines:]) if lines > 0 else b""
    return data[:limit] if limit is not None else data


class LogServer:
    """HTTPS on 127.0.0.1 serving ``/containerLogs/…`` from the runner's files."""

    def __init__(self, find: FindLog, running: IsRunning, workdir: Path, node_name: str) -> None:
        self.find, self.running = find, running
        self.workdir, self.node_name = workdir, node_name
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        """Listen; the port (for the Node's ``daemonEndpoints.kubeletEndpoint``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        pair = CertificateAuthority("local-runner-kubelet-ca").issue(
            self.node_name, server=True, dns_names=(self.node_name,), ip_addresses=("127.0.0.1",)
        )
        cert, key = pair.write(self.workdir, "kubelet")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server, self.port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="podrunner-logs", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _handler(logs: LogServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet: the runner logs what matters
            return

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served here")
                return
            _, namespace, pod, container = parts
            path = logs.find(namespace, pod, container)
            if path is None:
                self.send_error(
                    404, f"container {container} of pod {namespace}/{pod} has not run on this node"
                )
                return
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            lines = int(query["tailLines"]) if "tailLines" in query else None
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self._stream(path, (namespace, pod, container), query.get("follow") == "true", lines, limit)

        def _stream(
            self, path: Path, key: tuple[str, str, str], follow: bool, lines: int | None, limit: int | None
        ) -> None:
            with open(path, "rb") as fh:
                data = tail(fh.read(), lines, limit)
                self.wfile.write(data)
                sent = len(data)
                while follow and (limit is None or sent < limit):
                    alive = logs.running(*key)
                    chunk = fh.read()
                    if chunk:
                        chunk = chunk[: limit - sent] if limit is not None else chunk
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        sent += len(chunk)
                    elif not alive:
                        return
                    else:
                        time.sleep(FOLLOW_POLL)

    return Handler
