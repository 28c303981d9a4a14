"""implicit-icl: in-context learning as an exact rank-1 update of the MLP's first weight matrix."""
__version__ = "0.1.0"
