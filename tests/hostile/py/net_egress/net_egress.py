"""Network egress from an actor with network: false. Must be blocked inside the script.

arg picks the attempt: tcp (connect to the public IP literal 1.1.1.1:80), dns
(getaddrinfo("example.com")), raw (AF_PACKET and ICMP raw sockets, created only),
{"loopback": port} (connect to a listener the test runs on the host's 127.0.0.1), or
{"abstract": name} (connect to an abstract unix socket the test listens on, on the host:
abstract sockets belong to the network namespace, not to the file system).

Safety: a sandbox without its own empty network namespace must not send anything
off this machine, so tcp and dns are attempted only when the sandbox sees no route
at all; with a route the script reports "not blocked" without trying.
"""

import socket


def _routes():
    """Lines of the IPv4 main routing table and the non-loopback interfaces seen here."""
    with open("/proc/net/route") as f:
        routes = f.read().splitlines()[1:]
    with open("/proc/net/dev") as f:
        devs = [line.split(":")[0].strip() for line in f.read().splitlines()[2:]]
    return routes, [d for d in devs if d != "lo"]


def _attempt(kind):
    if kind == "raw":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        return
    if isinstance(kind, dict) and "abstract" in kind:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect("\0" + kind["abstract"])
        return
    if isinstance(kind, dict):
        socket.create_connection(("127.0.0.1", kind["loopback"]), timeout=1).close()
        return
    routes, devs = _routes()
    if routes or devs:
        raise _NotIsolated(f"routes={routes} devices={devs}")
    if kind == "tcp":
        socket.create_connection(("1.1.1.1", 80), timeout=1).close()
    elif kind == "dns":
        socket.getaddrinfo("example.com", 80)


class _NotIsolated(Exception):
    pass


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    kind = context.get_input("arg")
    try:
        _attempt(kind)
    except _NotIsolated as exc:
        return {"blocked": False, "error": f"network visible, not attempted: {exc}"}
    except OSError as exc:  # socket.gaierror and timeouts are OSErrors too
        return {"blocked": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"blocked": False, "error": ""}
