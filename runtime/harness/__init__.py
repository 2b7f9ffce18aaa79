"""What ``stitch run`` and the benchmarks drive: harnesses, not parts of Stitch.

- :mod:`.vllm_engine`: vLLM's real engine on a tiny saved checkpoint, one
  variant per process (``python -m stitch.runtime.harness.vllm_engine``);
- :mod:`.vllm_table`: vLLM eager, vLLM's own compile and Stitch side by side,
  each engine in its own process (``stitch run --vllm``, bench/vllm_engine.py);
- :mod:`.hf_decode`: greedy decoding of a transformers causal LM with a static
  KV cache (``stitch profile --hf --decode``, bench/hf_llama.py, the tests).

Each module imports vLLM or transformers only where it uses them, so importing
this package needs neither.  The core (``stitch.runtime`` outside the outer
packages) never imports it; only the command line does.
"""
