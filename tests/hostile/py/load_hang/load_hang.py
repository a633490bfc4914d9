"""Spin at load, before any call: top-level code runs against the actor's timeout_s (it ran
under the 15 s boot timeout, and every call failed -32009 after 15 s). Every load is the
attack (no payload is seen at load), so the benign call after fails the same way."""

while True:
    pass


def process(context):
    return {"ok": True}
