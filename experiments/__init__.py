"""Reproduce the papers' experiments: training the in-context regression transformer (P1 §4), E1–E6, reports.

- ``presets``: the ``p1`` and ``p2`` models and their training hyper-parameters (chosen and justified there;
  THEORY §5 marks the papers' own values UNCONFIRMED).
- ``evaluate``: NumPy-only (float64 reference) validation of a checkpoint on its seeded validation prompts.
- ``torch_model``: the model (one block or a stack) and its ΔW prediction as batched torch functions.
- ``train``: the training loop with atomic, resumable checkpoints (the command ``implicit-icl train`` is
  ``implicit_icl.commands.train``); ``fewshot_*``: the bundled few-shot Llama model (task, model, training, accuracy).
- ``e1_training`` … ``e6_rnn_steps``: one module per experiment, each with ``compute`` (its numbers, a plain dict),
  ``plot`` (its figures) and ``section`` (its part of report.md), listed in ``registry``; ``study``: the models and
  prompts they share in one run; ``statistics``, ``plots`` and ``text``: the statistics, plotting helpers and number
  format they share; ``report``: ``report.md`` rendered from ``report.json``; ``reproduce`` /
  ``implicit_icl.commands.reproduce`` is the command ``implicit-icl reproduce``.

Torch and matplotlib are imported only by the modules that need them; ``presets``, ``evaluate`` and ``report``
need NumPy only, so the bundled checkpoint can be checked without torch.
"""
