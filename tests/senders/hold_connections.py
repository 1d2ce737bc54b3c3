#!/usr/bin/python3
"""Holds TCP connections open against a server, as an abusive client would, and reports when
the server closed each one.

    hold_connections.py HOST PORT COUNT SECONDS [--src A,B,...] [--send HEX] [--trickle]

Opens COUNT connections to HOST:PORT (source addresses taken in turn from --src), writes the
bytes of --send on each (a request line that never ends, the start of a TLS ClientHello;
nothing by default: idle connections), and with --trickle one more header line on each every
second (a slowloris: bytes keep moving, the head never ends). Connections are made 5 ms apart,
watching the open ones in between. Watches them until SECONDS after the start and prints one
JSON object: "opened" (per connection, seconds from the start to its connect), "closed_after"
(seconds from its connect until the server closed it, null when still open at the end) and
"connect_failed".
"""

import argparse
import json
import select
import socket
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--src", default="")
    ap.add_argument("--send", default="")
    ap.add_argument("--trickle", action="store_true")
    a = ap.parse_args()
    srcs = [s for s in a.src.split(",") if s]
    payload = bytes.fromhex(a.send)
    start = time.monotonic()
    conns = []  # [socket, connected_at, closed_after]
    failed = 0
    poller = select.poll()
    by_fd = {}

    def close(c):
        c[2] = round(time.monotonic() - c[1], 3)
        poller.unregister(c[0])
        c[0].close()

    def watch(ms):
        for fd, _ in poller.poll(ms):
            c = by_fd[fd]
            if c[2] is not None:
                continue
            try:
                data = c[0].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                close(c)

    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if srcs:
            s.bind((srcs[i % len(srcs)], 0))
        s.settimeout(2)
        try:
            s.connect((a.host, a.port))
            if payload:
                s.sendall(payload)
        except OSError:
            failed += 1
            s.close()
            continue
        s.setblocking(False)
        c = [s, time.monotonic(), None]
        conns.append(c)
        poller.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
        by_fd[s.fileno()] = c
        watch(5)
    deadline = start + a.seconds
    next_trickle = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        watch(100)
        if a.trickle and time.monotonic() >= next_trickle:
            next_trickle += 1.0
            for c in conns:
                if c[2] is None:
                    try:
                        c[0].send(b"x-a: b\r\n")
                    except OSError:
                        close(c)
    print(
        json.dumps(
            {
                "opened": [round(c[1] - start, 3) for c in conns],
                "closed_after": [c[2] for c in conns],
                "connect_failed": failed,
            }
        )
    )


if __name__ == "__main__":
    main()
