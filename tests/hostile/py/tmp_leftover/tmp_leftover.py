"""Leave files behind in one call and look for them in the next (same warm worker).

arg "write": write a marker in every writable scratch place; "look": report which
markers are still there; "stealth": write them, then set /tmp's times back to what they
were (a harness that trusted the folder's mtime would not wipe it). A module global
proves the second call ran in the same worker.
"""

import os

PLACES = ["/tmp", "/dev/shm", "/var/tmp", os.path.expanduser("~")]
NAME = "hostile-leftover"
_wrote_here = []


def _write():
    for place in PLACES:
        try:
            with open(os.path.join(place, NAME), "w") as f:
                f.write("left over")
            _wrote_here.append(place)
        except OSError:
            pass
    return {"wrote_tmp": "/tmp" in _wrote_here, "wrote": list(_wrote_here)}


def _stealth():
    before = os.stat("/tmp")
    wrote = _write()
    try:  # gVisor's /tmp is not the sandbox user's: setting its times is refused there
        os.utime("/tmp", ns=(before.st_atime_ns, before.st_mtime_ns))
    except PermissionError:
        return {**wrote, "times_set": False}
    return {**wrote, "times_set": os.stat("/tmp").st_mtime_ns == before.st_mtime_ns}


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    if context.get_input("arg") == "write":
        return _write()
    if context.get_input("arg") == "stealth":
        return _stealth()
    found = [p for p in PLACES if os.path.exists(os.path.join(p, NAME))]
    return {"found": found, "same_worker": bool(_wrote_here)}
