#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT, sends one request on
each (so each is a real HTTP/1.1 keep-alive client connection), then keeps
them all idle until stdin closes. Prints 'ready N' when all are open.

MODE 'burst' (the default) sends every request before reading any answer,
so up to N are in flight at once; 'one-by-one' reads each answer before
opening the next connection."""
import socket, sys

port, n = int(sys.argv[1]), int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "burst"
socks = []
ok = 0


def answered(s):
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.startswith(b"HTTP/1.1 200")


for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    socks.append(s)
    if mode == "one-by-one":
        ok += answered(s)
if mode != "one-by-one":
    ok = sum(answered(s) for s in socks)
print(f"ready {ok}", flush=True)
sys.stdin.read()
