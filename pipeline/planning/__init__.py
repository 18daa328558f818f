"""Planning a run: manifests and the shards cut from them. No Ray, no torch."""
