"""The experiments, in report order: ``reproduce`` computes and plots them, ``report`` renders their sections.

Each module exposes ``KEY`` (its report.json section), ``PAPER`` (what the sources report), ``compute(study)`` (its
numbers, or None where it does not apply), ``plot(report, out)`` (its figure files) and ``section(report)`` (its
lines of report.md). Adding an experiment is adding a module to this list.
"""
from __future__ import annotations

from . import e1_training, e2_convergence, e3_finetuning, e4_stack_identities, e5_thought_patch, e6_rnn_steps

EXPERIMENTS = (e1_training, e2_convergence, e3_finetuning, e4_stack_identities, e5_thought_patch, e6_rnn_steps)
