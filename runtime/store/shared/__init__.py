"""The fleet's shared store behind the local cache (docs/cache.md, "A fleet")."""
