"""A TCP relay that adds latency, for machines without ``tc netem``.

Each accepted connection is forwarded to ``target``; every chunk read in either direction is
written out ``delay_s`` after it arrived, in order, so the stream is unchanged and each direction
gets ``delay_s`` of one-way latency (the round trip ``2 * delay_s``). It runs an asyncio loop on a
daemon thread of the test process, so it dies with the test; :meth:`close` stops it early.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

CHUNK = 65536


class DelayRelay:
    def __init__(self, listen_host: str, target: tuple[str, int], delay_s: float):
        self.listen_host, self.target, self.delay_s = listen_host, target, delay_s
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="delay-relay", daemon=True)

    def start(self) -> int:
        """Listen on a free port of ``listen_host``; returns that port."""
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, self.listen_host, 0), self.loop)
        self._server = started.result(timeout=5)
        return self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``delay_s`` after it was read (order kept)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(CHUNK):
                    queue.put_nowait((self.loop.time() + self.delay_s, data))
            queue.put_nowait((self.loop.time() + self.delay_s, b""))  # end of stream, delayed like the data

        reading = asyncio.ensure_future(read())
        try:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            reading.cancel()
            writer.close()

    async def _shutdown(self) -> None:
        """Stop listening and end every connection's tasks, so none is left pending on a closed loop."""
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
