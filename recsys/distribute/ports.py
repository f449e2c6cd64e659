"""Free TCP ports for a one-machine cluster, held until their servers have bound them.

Picking a free port by binding port 0 and closing the socket leaves a window in which
another process can take the port before the server binds it. Here the picking socket
stays bound, with ``SO_REUSEPORT``, until the server is up: any other process's bind
of that port fails (it lacks ``SO_REUSEPORT``, or runs as another user), while a
TensorFlow server started with ``TF_GRPC_REUSE_PORT=1`` (which makes its gRPC
listener set ``SO_REUSEPORT`` too) binds it. A bound socket that never listens takes
no connections, so holding it costs nothing.

Never imports TensorFlow.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["REUSE_PORT_ENV", "PortReservation", "reserve_ports"]

# What tells TensorFlow's gRPC server to bind with SO_REUSEPORT (grpc_server_lib.cc).
REUSE_PORT_ENV = {"TF_GRPC_REUSE_PORT": "1"}


class PortReservation:
    """A TCP port kept bound (``SO_REUSEPORT``, not listening) until :meth:`release`.

    TensorFlow's gRPC servers listen on every interface (``0.0.0.0``), so the port is
    reserved on every interface too.

    Example:
        >>> with reserve_ports(2) as (a, b):
        ...     a.port != b.port
        True

    Raises:
        OSError: The system has no ``SO_REUSEPORT`` (not Linux or BSD) or no free port.
    """

    def __init__(self) -> None:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise OSError(
                "Holding a port for a TensorFlow server needs SO_REUSEPORT, which this "
                "system lacks; `python -m recsys.cluster local` runs on Linux."
            )
        self._socket: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._socket.bind(("0.0.0.0", 0))
        self.port: int = self._socket.getsockname()[1]

    @property
    def held(self) -> bool:
        """Whether the port is still reserved."""
        return self._socket is not None

    def release(self) -> None:
        """Closes the reserving socket (idempotent)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __repr__(self) -> str:
        return f"PortReservation(port={self.port}, held={self.held})"


@contextmanager
def reserve_ports(n: int) -> Iterator[list[PortReservation]]:
    """Reserves ``n`` distinct free ports; releases those still held on exit.

    Args:
        n: How many ports, >= 1.

    Yields:
        The reservations; release each one once its server has bound the port.

    Raises:
        ValueError: ``n`` < 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1. Received: n={n!r}")
    reservations: list[PortReservation] = []
    try:
        for _ in range(n):
            reservations.append(PortReservation())
        yield reservations
    finally:
        for reservation in reservations:
            reservation.release()
