"""Benchmarks driven by ``alignn bench``: see ``docs/elemental.md``.

``alignn_core.bench.mlearn``: the mlearn folder layout, the carved validation split, variants and
their configs; ``alignn_core.bench.runner``: training runs, reuse, re-evaluation;
``alignn_core.bench.report``: ``results.json`` and ``results.md``.
"""
