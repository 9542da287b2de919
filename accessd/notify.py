"""systemd's sd_notify datagram protocol, written out (it is a few lines).

Messages go to the AF_UNIX datagram socket named by $NOTIFY_SOCKET (a leading
'@' means the abstract namespace). Without that variable (not under systemd,
or Type=simple) every call is a no-op. The watchdog interval comes from
$WATCHDOG_USEC; `watchdog()` pings at half of it and must only be called while
the doors are known to be turning (the daemon checks each door's thread), so a
hung door stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Never wait on systemd: with its queue full (10 datagrams by default) a blocking send
            # once hung the daemon's stop. A message that cannot go now is dropped, with a warning.
            self._sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 0.0
        self._next_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc.strerror or exc)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        if not self.watchdog_interval:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval
            self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
