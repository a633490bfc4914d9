"""Raises from a helper, so the traceback has two frames of this file."""


def ratio(a, b):
    return a / b


def process(context):
    return ratio(context.get_input("input", 1), 0)
