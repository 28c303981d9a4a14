"""The benchmark behind ``implicit-icl bench`` (the command is ``implicit_icl.commands.bench``): ``measure`` and
``baselines`` time one figure each in a child process (``python -m implicit_icl.bench <spec>``, ``__main__``),
``common`` holds what they share (setup, timers, peak memory), ``report`` turns results into ratios, targets and
tables, ``format`` writes the numbers."""
