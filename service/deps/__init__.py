"""Actor dependencies: declared in the manifest, built once into a content-addressed cache.

``spec`` parses and normalizes what a manifest declares (pure; the manifest loader uses
it). ``cache`` names, verifies and seals cache entries. ``install`` runs pip or npm in a
bubblewrap sandbox of its own. ``build`` ties them together for the runtime and
``service build``. The sandbox backends only ever see a built entry's path
(``ActorDef.deps_entry``), mounted read-only.
"""
