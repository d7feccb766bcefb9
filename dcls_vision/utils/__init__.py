"""Bottom-layer helpers with no dependency on the rest of dcls_vision: user errors, checkpoint IO, paths and
config nodes as plain dicts."""
