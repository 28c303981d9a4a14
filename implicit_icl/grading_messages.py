"""What the grader says: ``GradingFailure`` (a failed check, written for the student), ``fmt`` (a short rendering of
a value in a message) and the notes a grader leaves even when every check passes. Part of ``implicit_icl.grading``,
which re-exports every public name here."""
from __future__ import annotations

import numpy as np

NOTES: list[str] = []


class GradingFailure(AssertionError):
    """A failed check, with a message written for the student.

    ``check`` names what was checked; ``expected``/``got`` are shown side by side; ``hint`` says what to look at.
    """

    def __init__(self, check: str, *, expected=None, got=None, hint: str | None = None, detail: str | None = None):
        self.check, self.expected, self.got, self.hint, self.detail = check, expected, got, hint, detail
        lines = [f"check:    {check}"]
        if expected is not None:
            lines.append(f"expected: {_indent(expected)}")
        if got is not None:
            lines.append(f"got:      {_indent(got)}")
        if detail:
            lines.append(f"detail:   {_indent(detail)}")
        if hint:
            lines.append(f"hint:     {_indent(hint)}")
        super().__init__("\n".join(lines))


class CallFailure(GradingFailure):
    """A failure of the student's function itself (missing, unsolved, crashing, exiting, changing its inputs): shown
    as it is even when a check it depends on failed, since it names what to fix."""


def _indent(value) -> str:
    text = value if isinstance(value, str) else fmt(value)
    return text.replace("\n", "\n          ")


FEW = 5          # values shown of an array in a message: its shape, a few values and the worst entry, never a dump


def fmt(x) -> str:
    """A short readable rendering of a number or an array: its shape and its first ``FEW`` values, on one line."""
    if isinstance(x, str):
        return x
    arr = np.asarray(x) if not is_tensor(x) else np.asarray(x.detach().cpu())
    if arr.dtype == object:
        return repr(x)
    if arr.ndim == 0:
        return np.array2string(arr, precision=6)
    if arr.ndim == 1 and arr.size <= FEW:
        return f"array of shape {arr.shape}: {np.array2string(arr, precision=4, max_line_width=200)}"
    first = np.array2string(arr.ravel()[:FEW], precision=4, max_line_width=200)[:-1]
    return f"array of shape {arr.shape}: {first} …] (first {min(FEW, arr.size)} of {arr.size} values, row-major)"


def note(message: str) -> None:
    """Record a message to show the student even when every check passes (printed by both runners)."""
    NOTES.append(message)


def is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor (told by its type's module, so torch is never imported here)."""
    return type(x).__module__.startswith("torch")
