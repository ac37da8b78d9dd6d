"""systemd's notify protocol: ready, watchdog pings and stopping, as datagrams on $NOTIFY_SOCKET.

The protocol is one ``KEY=value`` datagram per message on the unix socket systemd names
in ``$NOTIFY_SOCKET`` (a path, or an abstract socket written with a leading ``@``), so it
takes a few lines here rather than a dependency. Outside systemd the variable is unset and
every call does nothing. A failed send is logged at debug level and never raised: the
service must not stop because its supervisor's socket went away.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)
SOCKET_ENV = "NOTIFY_SOCKET"


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``); True if it was handed to systemd."""
    address = os.environ.get(SOCKET_ENV)
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.debug("sd_notify %s failed: %s", message, exc)
        return False
    return True


def ready() -> bool:
    return notify("READY=1")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def extend_start(seconds: float) -> bool:
    """Ask for ``seconds`` more to start in than the unit's ``TimeoutStartSec`` gives, counted
    from now (systemd 236 and later; older ones ignore it): a migration of a large database
    takes longer than a start should, and a start killed partway begins again from scratch."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")
