"""The saved forward: a model compiled once through the pipeline, loaded by every later process without Dynamo.

``aot.py`` is the public entry (:func:`aot_compile`); it and the rest of this
package use the compile pipeline (``runtime/pipeline``) through its backend,
and nothing in the pipeline calls back up into this package.
"""
