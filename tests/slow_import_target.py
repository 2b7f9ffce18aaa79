"""A module whose import takes seconds: a fork server that preloads it is
still importing when a job comes (tests/test_spawned_pool.py)."""

import time

time.sleep(8.0)
