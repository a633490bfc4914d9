"""Actor manifests: the format (schemas/manifest.schema.json), the loader and lint."""
