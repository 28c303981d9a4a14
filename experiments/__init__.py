"""Reproduce the papers' experiments: training the in-context regression transformer (P1 §4), E1–E4, reports.

- ``presets``: the ``p1`` and ``p2`` models and their training hyper-parameters (chosen; THEORY §5 marks the papers'
  own values UNCONFIRMED).
- ``evaluate``: NumPy-only (float64 reference) losses of a checkpoint on seeded validation prompts.
- ``train``: the torch training loop with atomic, resumable checkpoints (``implicit-icl train``).
- ``experiments``: E1–E4; ``plots``: the figures; ``report``: ``report.md`` generated from ``report.json``
  (``implicit-icl reproduce``).

Torch and matplotlib are imported only by the modules that need them; ``presets`` and ``evaluate`` need NumPy only.
"""
