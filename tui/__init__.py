"""The terminal walkthrough (``implicit-icl walkthrough``): step through a prompt token by token and watch ΔW_i.

- ``data``: ``WalkthroughData`` and its builders — every number, prepared once by the library (no Textual here).
- ``view``: drawing helpers (heatmap, bars, braille curves, number formats), Rich only.
- ``app``: the Textual app (imports Textual); ``command``: the CLI command (imports Textual lazily).
"""
