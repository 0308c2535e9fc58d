"""A TCP proxy between the functions/workers and PostgreSQL that drops or stalls connections.

    python -m tests.faults.proxy --listen 127.0.0.1:6001 --target 127.0.0.1:5999 --control 6002

Commands on the control port, one line each, answered `ok <json stats>`:
- `drop`: reset every open connection now (RST, as a NAT or pooler restart does).
- `refuse S`: drop, then reset every new connection for S seconds (an outage seen from the app).
- `stall S`: forward nothing, on open or new connections, for S seconds; then carry on with what
  was buffered (a partition that heals: statements hang, nothing is lost).
- `heal`: end any refuse or stall now.
- `stats`: just the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import time

CHUNK = 64 * 1024


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.connections: set[asyncio.StreamWriter] = set()
        self.refuse_until = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.stall_handle: asyncio.TimerHandle | None = None
        self.stats = {"accepted": 0, "reset": 0, "refused": 0, "upstream_failed": 0}

    async def handle(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter):
        if time.monotonic() < self.refuse_until:
            self.stats["refused"] += 1
            _reset(client)
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats["upstream_failed"] += 1
            _reset(client)
            return
        self.stats["accepted"] += 1
        self.connections.update((client, upstream))
        try:
            await asyncio.gather(
                self.pipe(client_reader, upstream), self.pipe(upstream_reader, client)
            )
        finally:
            for writer in (client, upstream):
                self.connections.discard(writer)
                writer.close()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # one side ended: end the other, so the peer sees the connection close
            _reset(writer)

    def drop(self) -> None:
        for writer in list(self.connections):
            self.stats["reset"] += 1
            _reset(writer)
        self.connections.clear()

    def refuse(self, seconds: float) -> None:
        self.refuse_until = time.monotonic() + seconds
        self.drop()

    def stall(self, seconds: float) -> None:
        self.flowing.clear()
        if self.stall_handle is not None:
            self.stall_handle.cancel()
        self.stall_handle = asyncio.get_running_loop().call_later(seconds, self.flowing.set)

    def heal(self) -> None:
        self.refuse_until = 0.0
        if self.stall_handle is not None:
            self.stall_handle.cancel()
        self.flowing.set()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command, _, argument = line.decode().strip().partition(" ")
            match command:
                case "drop":
                    self.drop()
                case "refuse":
                    self.refuse(float(argument))
                case "stall":
                    self.stall(float(argument))
                case "heal":
                    self.heal()
                case "stats":
                    pass
                case _:
                    writer.write(f"error unknown command {command!r}\n".encode())
                    continue
            stats = {**self.stats, "open": len(self.connections) // 2}
            writer.write(f"ok {json.dumps(stats)}\n".encode())
            await writer.drain()
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0 turns close() into a RST: the peer's next read fails at once, as in a real drop.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], target: tuple[str, int], control_port: int) -> None:
    proxy = Proxy(*target)
    server = await asyncio.start_server(proxy.handle, *listen)
    control = await asyncio.start_server(proxy.control, "127.0.0.1", control_port)
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.proxy")
    parser.add_argument("--listen", required=True, help="host:port to accept connections on")
    parser.add_argument("--target", required=True, help="host:port of PostgreSQL")
    parser.add_argument("--control", required=True, type=int, help="port of the control socket")
    args = parser.parse_args()
    asyncio.run(serve(_address(args.listen), _address(args.target), args.control))


if __name__ == "__main__":
    main()
