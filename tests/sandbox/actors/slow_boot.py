"""Takes seconds to import, so a test can act on the sandbox while it boots."""

import time

time.sleep(5)


def process(context):
    return "booted"
