"""The cache folder each vLLM engine or server of the tests gets.

NOTE: [vLLM's model information, inspected once a session]
Before it builds an engine, vLLM inspects the model's class in a fresh Python
process (``_run_in_subprocess`` in vllm/model_executor/models/registry.py,
importing vLLM and torch again: about 29 s of one core on the 2-core CI
machine) and keeps the answer in ``<VLLM_CACHE_ROOT>/modelinfos/<class>.json``,
under a hash of the model's module, which vLLM checks on every read.  A user's
second engine finds it there.  The tests give every engine a cache root of its
own (Stitch's cache lives in it, and a test must see only its own entries), so
each of their twenty-odd engines paid the inspection again.  Each root's
``modelinfos`` is therefore a link to one folder of the test session: vLLM
writes that file through a rename (``atomic_writer``), so engines started
together read it whole or not at all.  Nothing of Stitch lives in that folder.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _session_model_infos() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="stitch-vllm-modelinfos-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def vllm_cache_root(root: Path) -> Path:
    """``root``, made, with vLLM's model information shared by the session
    (NOTE above); the engine's ``VLLM_CACHE_ROOT``."""
    root.mkdir(parents=True, exist_ok=True)
    link = root / "modelinfos"
    if not link.exists():
        link.symlink_to(_session_model_infos(), target_is_directory=True)
    return root
