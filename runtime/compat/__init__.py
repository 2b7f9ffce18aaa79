"""The seam between Stitch and torch's private modules: one small module per concern.

NOTE: [one seam for torch's private APIs]
Stitch leans on torch internals that change between releases: Dynamo's AOT
compile and its saved bytecode, Inductor's standalone compile and artifact
format, fake tensors and the ShapeEnv's guards.  Every use of
``torch._dynamo``, ``torch._inductor``, ``torch._subclasses``, ``torch._guards``,
``torch._functorch``, ``torch._dispatch`` and ``torch.utils._*`` in the runtime
goes through the modules here (``tests/test_torch_versions.py`` fails on one
anywhere else), and each of them says which torch releases differ and how.  So
supporting the next release starts with reading these files:

- ``versions``: the supported range and what each release gives;
- ``dynamo``: marking dims, ``aot_compile``, its saved function and bytecode
  globals, restarts;
- ``inductor``: ``standalone_compile``, artifacts, the names generated wrapper
  code imports, the warm-up;
- ``fake``: fake tensors, the tracing context, fake propagation;
- ``shapes``: the ShapeEnv: ranges, backed values, the guards a call adds;
- ``guard_codec`` and ``guard_bounds``: a recorded guard as structural text,
  read back through one reader and bounded before anything is computed;
- ``pytree``: flattening outputs;
- ``python_ast``: ``ast.parse`` and ``ast.literal_eval`` built with the
  collector held off, where CPython shares the AST constructor's depth;
- ``graph_pickle``: pieces, fake tensors and the ShapeEnv across a process
  boundary (spawned compile workers);
- ``trace``: ``TORCH_TRACE`` artifacts and ``dynamo_timed`` phase times;
- ``static_launcher``: loading a cubin through torch's static CUDA launcher.

Importing any of them imports neither Dynamo nor Inductor: a warm start loads
neither (``tests/test_warm_start.py``); they are imported inside the functions
that need them.
"""
