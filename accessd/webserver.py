"""The console's HTTP server: waitress (a production WSGI server, pure Python) on its own threads.

Requests are served by waitress's worker threads, never by the frame loop.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, app: Any, host: str, port: int, threads: int = 4, trusted_proxy: str | None = None) -> None:
        from waitress.server import create_server

        # Behind a TLS reverse proxy at `trusted_proxy`, waitress takes the client's address,
        # the scheme (https, for the Origin check) and the host from the proxy's
        # X-Forwarded-* headers; it drops those headers from any other peer, so a client
        # cannot claim another address to dodge the login limit.
        proxy: dict[str, Any] = {"clear_untrusted_proxy_headers": True}
        if trusted_proxy:
            proxy.update(trusted_proxy=trusted_proxy, trusted_proxy_count=1,
                         trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
        # Raises OSError naming the address when the port is taken. (Its select() timeout,
        # asyncore_loop_timeout, is whole seconds: 0.5 became 0 and spun a core.)
        self._server: Any = create_server(app, host=host, port=port, threads=threads, ident="accessd",
                                          channel_timeout=30, **proxy)
        self.host, self.port = host, int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("console on http://%s:%d/", self.host, self.port)

    def close(self) -> None:
        from waitress import wasyncore

        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
        if not self._thread.is_alive():
            wasyncore.close_all(self._server._map)
            return
        # Closed on the server's own thread (its trigger runs the call there): closing the sockets from
        # here while it sat in select() made it fail with EBADF, a traceback at every console stop.
        closed = threading.Event()

        def close_all() -> None:
            wasyncore.close_all(self._server._map)
            closed.set()

        self._server.trigger.pull_trigger(close_all)
        if not closed.wait(3):
            wasyncore.close_all(self._server._map)
        self._thread.join(timeout=3)
