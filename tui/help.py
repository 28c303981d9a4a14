"""The walkthrough's help screen: the keys and how to read each panel (``?``)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

HELP_TEXT = """\
[b]What you see[/b]
A contextual block T_W (attention, then an MLP whose first matrix is W) reads a prompt c_1..c_n and a fixed
query x. At step i it has consumed c_1..c_i. The theorem (Dherin et al. 2025, Thm 2.2) says the block's output
with that context equals the output of the query [i]alone[/i] with W replaced by W + ΔW_i, where

    ΔW_i = u_i aᵀ / ‖a‖²,   u_i = W (a_i − a),   a = the MLP input for the query alone   (rank 1)

In a block with a residual around the MLP (every kind but plain; a real model's layers) the residual r changes
with the context too, so the MLP's output bias takes it: b_out + Δb_i, Δb_i = r_i − r (Innocenti & Achour 2025).
There the check compares with T_(W+ΔW_i, b+Δb_i)(x) and shows ‖Δb_i‖; W + ΔW_i alone would not reproduce it.

[b]Panels[/b]   step i is the step that consumed c_i, ΔW_i − ΔW_(i−1): every panel numbers it so
  prompt    the context tokens (✓ consumed, ▶ the current one c_i) and the fixed query; on a regression
            prompt the number on token k is its y value, y_k = ⟨w, x_k⟩
  heatmap   ΔW_i (or, with s, step i: ΔW_i − ΔW_(i−1)), block-averaged to fit; its factors u_i and a
  check     the output with i tokens of context vs the query alone with the update: equal up to round-off
  GD view   step i: W_i = W_(i−1) − h ∇L_(i−1)(W_(i−1))  (P1 Prop. 3.1), where
              h = 1/‖a‖²: the step size, the same for every step, set by the query alone
              L_i(W) = tr(Δ_iᵀ W): a loss linear in W (Δ_i = W(a_i − a_(i+1))aᵀ); its step adds c_(i+1)
  curves    ‖ΔW_i‖, step i's size ‖ΔW_i − ΔW_(i−1)‖, its ratio to ‖ΔW_(i−1)‖, and ŷ with c_1..c_i against
            the truth and the least-squares fit of the same i examples; each beside an untrained block
  tokens    (--model) which tokens move W most: ‖ΔW({c_j})‖, the update removing c_j alone; ‖ΔW‖/‖W‖ against
            a random layer of the same shapes and weight scale

[b]Read it honestly[/b] (THEORY §8)
  • The identity is algebra: it holds for any block, trained or random, so the check shows only the round-off
    of the dtype (float64: ~1e-16 relative to the output; float32, e.g. --backend torch: ~1e-7).
  • L_i is linear in W and built from the update itself: the "gradient descent" is an exact rewriting.
  • Steps shrink like 1/i for softmax attention even untrained: compare with the baseline (b).
  • ΔW depends on the query; another query needs another ΔW.

[b]Keys[/b]
  → / l  next token        ← / h  previous token      Home / End  first / last step
  space  play / pause      b  baseline on/off          s  ΔW_i  ↔  step ΔW_i − ΔW_(i−1)
  ?      this help         q / Ctrl-C  quit             click a token to jump to it
  [ / ]  previous / next layer (--model)

[dim]Press ? or Escape to close.[/dim]"""


class HelpScreen(ModalScreen):
    """The key list and how to read the panels."""

    BINDINGS = [Binding("escape,question_mark", "close", "close help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > #help { width: auto; max-width: 118; height: auto; border: round $accent; padding: 0 2;
                         background: $surface; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP_TEXT, id="help")

    def action_close(self) -> None:
        self.dismiss()
