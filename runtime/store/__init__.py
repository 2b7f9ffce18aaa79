"""The store: the persistent compile cache, its index, and the debug dump."""
