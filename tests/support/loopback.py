"""One aiohttp application served on 127.0.0.1 from its own thread and event loop.

The loopback fakes (Slack's Web API, the Kubernetes API, a CT log) share this harness, so a
sync test, a module-scoped fixture and an async test can all start and stop them the same
way: ``with Fake() as f``, ``async with Fake() as f``, or ``start()`` / ``stop()`` (again on
the same port after a stop). A subclass provides :meth:`_app`, and optionally a TLS context,
a hook that runs on the server's loop before it serves, and one that runs before it stops.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from types import TracebackType
from typing import Self

from aiohttp import web


class ThreadedServer:
    """See the module docstring. ``port`` 0 picks a free port on the first start."""

    #: Thread name, and how start-up failures name the server.
    server_name = "loopback-server"
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def _app(self) -> web.Application:
        raise NotImplementedError

    def _ssl_context(self) -> ssl.SSLContext | None:
        return None

    async def _on_serve(self) -> None:
        """Runs on the server's loop before it accepts connections."""

    def _before_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs in the caller's thread just before the loop is stopped."""

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> Self:
        """Serve (again, on the same port after a :meth:`stop`); returns once listening."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        runner_box: list[web.AppRunner] = []

        async def serve() -> None:
            await self._on_serve()
            runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            await web.SockSite(runner, sock, ssl_context=self._ssl_context()).start()
            runner_box.append(runner)

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as e:
                failure.append(e)
                sock.close()
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            try:
                loop.run_until_complete(runner_box[0].cleanup())
                # TLS transports close asynchronously (close_notify, then the socket): give
                # them a few turns of the loop so none is left open when the loop closes.
                loop.run_until_complete(asyncio.sleep(0.05))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                sock.close()
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self.server_name, daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError(f"{self.server_name} did not start")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop listening (state is kept); idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._before_stop(loop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._thread = None
        self._loop = None

    def close(self) -> None:
        """:meth:`stop`, and anything else a subclass owns (temporary files)."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)
