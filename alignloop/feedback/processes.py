"""Several studio server processes on one port (``alignloop label serve --workers N``), each with a listening
socket of its own (``SO_REUSEPORT``), so that the kernel spreads the connections over them.

uvicorn's own ``--workers`` shares one listening socket between its processes, and whichever process is awake
accepts every connection waiting (asyncio accepts up to the backlog at once). A burst of keep-alive connections
(a proxy's, or labelers who start together) then lands on one process: 16 labelers came out 15 to 1 on two
processes, and one process (one core, for Python) served nearly everything (benchmarks/README.md, "Threads, one
socket per process, no Nagle"). With a socket per process the kernel hashes each new connection to one of them.
This is what gunicorn's ``--reuse-port`` and nginx's ``reuse_port`` do; uvicorn has no such setting, so this module
starts the processes itself and runs uvicorn's ``Server`` in each. Where the platform has no ``SO_REUSEPORT``
(Windows), uvicorn's workers are used as before.

The parent restarts a process that dies (after the first seconds: a process that cannot start, say on a bad
database URL, stops the whole server instead of restarting in a loop), and on SIGINT or SIGTERM stops them all;
each finishes its requests first (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import time
from typing import Any

from alignloop.core.errors import AlignloopError

log = logging.getLogger("alignloop.feedback")

#: a process that ends sooner than this after its start could not start: the server stops rather than retry
STARTUP_SECONDS = 10.0


def supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT") and sys.platform != "win32"


def serve(app: str, workers: int, host: str, port: int, **settings: Any) -> int:
    """Serve the uvicorn app factory ``app`` (``"module:function"``) with ``workers`` processes on host:port;
    ``settings``: the rest of ``uvicorn.Config``'s. Returns when stopped (0), or 1 when a process could not start."""
    family = _family(host, port)
    _check_free(family, host, port)
    ctx = multiprocessing.get_context("spawn")
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda sig, _frame: stopping.append(sig))
                for sig in (signal.SIGINT, signal.SIGTERM)}

    def start() -> tuple[Any, float]:
        p = ctx.Process(target=_serve_one, args=(app, family, host, port, settings), daemon=False)
        p.start()
        return p, time.monotonic()

    procs = [start() for _ in range(workers)]
    code = 0
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p, _ in procs], timeout=0.5)
            for i, (p, started) in enumerate(procs):
                if p.exitcode is None or stopping:
                    continue
                if time.monotonic() - started < STARTUP_SECONDS:
                    log.error("server process %s ended at its start (exit code %s): stopping", p.pid, p.exitcode)
                    stopping.append(0)
                    code = 1
                    break
                log.warning("server process %s ended (exit code %s): starting another", p.pid, p.exitcode)
                procs[i] = start()
    finally:
        # Ctrl-C reached every process of the terminal's group, and each is finishing its requests: a second signal
        # would make uvicorn drop them. Otherwise (SIGTERM to this process, a process that could not start) they
        # are told with SIGTERM; uvicorn finishes the requests under way, then ends.
        for p, _ in procs:
            if p.exitcode is None and stopping[:1] != [signal.SIGINT]:
                p.terminate()
        for p, _ in procs:
            p.join(30)
            if p.exitcode is None:
                p.terminate()
                p.join(10)
            if p.exitcode is None:
                p.kill()
                p.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise AlignloopError(f"host: cannot serve on '{host}': {exc}") from None


def _check_free(family: socket.AddressFamily, host: str, port: int) -> None:
    """Refuse a port in use. (Sockets with SO_REUSEPORT would share it with another server of the same user that
    set it too, instead of failing.)"""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AlignloopError(f"port: cannot listen on {host}:{port}: {exc.strerror}") from None


def _listening_socket(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    # IPPROTO_TCP said out loud: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections whose socket
    # says it is TCP, and connections accepted on a socket made with protocol 0 say 0. With Nagle on, each response
    # (headers, then body: two writes) waited for the client's delayed ACK: 40 ms more per request, seen with
    # uvicorn's own workers too (its shared socket is made the same way), and gone with one process.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)  # (uvicorn's default backlog)
    sock.set_inheritable(True)
    return sock


def _serve_one(app: str, family: socket.AddressFamily, host: str, port: int, settings: dict) -> None:
    """One server process: its own socket on the shared port, and uvicorn's server with the app ``app`` makes."""
    import uvicorn

    signal.signal(signal.SIGINT, signal.default_int_handler)  # (uvicorn installs its own handlers in serve)
    config = uvicorn.Config(app, factory=True, host=host, port=port, **settings)
    sock = _listening_socket(family, host, port)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # (Ctrl-C reaches the whole process group; the parent stops the rest)
        pass
    finally:
        sock.close()
