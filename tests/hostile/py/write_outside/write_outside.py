"""Write outside /tmp: into the actor's own folder, /actor, /etc, /usr. Every write must fail.

arg: the file name to create in each place (the test checks the host afterwards).
"""

import os


def _targets(name):
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(here, name), f"/actor/{name}", f"/etc/{name}", f"/usr/{name}",
            f"/usr/lib/{name}"]


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    written, errors = [], []
    for path in _targets(context.get_input("arg")):
        try:
            with open(path, "w") as f:
                f.write("hostile")
            written.append(path)
        except OSError as exc:
            errors.append(f"{path}: {type(exc).__name__}")
    return {"blocked": not written, "error": "; ".join(errors), "written": written}
