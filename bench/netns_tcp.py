#!/usr/bin/python3
"""netns_tcp.py - raw TCP throughput between two nodes of the emulated cluster (bench/cluster.sh).

    netns_tcp.py serve PORT [PORT...]        in the receiving node's namespace: accept one
                                             connection per port, read until EOF, print
                                             "PORT BYTES SECONDS" per connection, then exit
    netns_tcp.py send ADDR PORT SECONDS      in the sending node's namespace: write for SECONDS

The receiver times from the first byte to the last, so connection set-up is not counted. Only
the standard library is used. The server gives up after 60 s without a connection.
"""
import socket
import sys
import threading
import time

CHUNK = 1 << 20


def serve(ports):
    listeners = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
        s.listen(1)
        s.settimeout(60)
        listeners.append((port, s))
    print("ready", flush=True)
    results = {}

    def receive(port, listener):
        conn, _ = listener.accept()
        buf = bytearray(CHUNK)
        total = 0
        first = last = None
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            last = time.perf_counter()
            if first is None:
                first = last
                n = 0                 # the first read starts the clock
            total += n
        conn.close()
        results[port] = (total, (last - first) if first is not None else 0.0)

    threads = [threading.Thread(target=receive, args=pl) for pl in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for port, _ in listeners:
        total, seconds = results.get(port, (0, 0.0))
        print("%d %d %.6f" % (port, total, seconds), flush=True)


def send(addr, port, seconds):
    for _ in range(100):                  # the server may still be starting
        try:
            s = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            time.sleep(0.05)
    else:
        sys.exit("netns_tcp.py: cannot connect to %s:%d" % (addr, port))
    data = bytes(CHUNK)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    elif len(sys.argv) == 5 and sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(__doc__.strip().split("\n\n")[1])


if __name__ == "__main__":
    main()
