"""Import a module that does not exist. Must end -32004 with type ModuleNotFoundError."""


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    import no_such_module_for_hostile_tests  # noqa: F401

    return {"imported": True}
