#!/usr/bin/env python3
"""Hold many idle keep-alive client connections open against a proxy.

Used by bench/compare.sh to measure a proxy's memory per idle client
connection. Each connection makes one HTTP/1.1 keep-alive request (so the
proxy holds a real, used keep-alive connection rather than a half-open one
that its header-read timeout would cut), then stays idle for --hold seconds.

Prints `READY opened=N failed=M` once every connection is open (the caller
samples the proxy's RSS then), and at the end one line
`DONE opened=N failed=M closed_by_peer=C`.
"""

import argparse
import asyncio
import resource
import sys

#: Connections being set up at once: below the listen backlogs of all three
#: proxies (nginx's default is 511), so no SYN is dropped and retried.
OPEN_CONCURRENCY = 256
#: Per-step time limit while opening; a proxy that stops accepting shows up
#: as failures, not as a hung benchmark.
STEP_TIMEOUT = 10.0


async def read_response(reader):
    """Read one response; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        await reader.readuntil(b"0\r\n\r\n")
    elif length:
        await reader.readexactly(length)
    return status


async def open_one(host, port, request, gate):
    async with gate:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), STEP_TIMEOUT
            )
            writer.write(request)
            await writer.drain()
            status = await asyncio.wait_for(read_response(reader), STEP_TIMEOUT)
            if status == 200:
                return reader, writer
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError, IndexError):
            pass
        if writer is not None:
            writer.close()
        return None


async def watch(reader, closed):
    """Count the connection as closed when the peer ends it."""
    try:
        if await reader.read(1) == b"":
            closed.append(1)
    except OSError:
        closed.append(1)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    request = (
        f"GET / HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    results = await asyncio.gather(
        *(open_one(args.host, args.port, request, gate) for _ in range(args.conns))
    )
    conns = [c for c in results if c is not None]
    failed = args.conns - len(conns)
    print(f"READY opened={len(conns)} failed={failed}", flush=True)

    closed = []
    watchers = [asyncio.ensure_future(watch(r, closed)) for r, _ in conns]
    await asyncio.sleep(args.hold)
    for w in watchers:
        w.cancel()
    for _, writer in conns:
        writer.close()
    print(
        f"DONE opened={len(conns)} failed={failed} closed_by_peer={len(closed)}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
