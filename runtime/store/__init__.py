"""The store: the persistent compile cache, its index, the debug dump, and the
fleet's shared store behind the cache (``shared/``)."""
