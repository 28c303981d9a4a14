"""The identity tests can fail: computing ΔW wrongly makes the checks of ``implicit_icl.identities`` fail.

Each mutant replaces ``implicit_update`` (as seen by the checks) with a plausible mistake; every identity check
that depends on it must then report an error far above its tolerance.
"""
import numpy as np
import pytest

import implicit_icl.identities as identities
from implicit_icl.reference import BlockConfig, KINDS, Update, implicit_update, taps
from implicit_icl.reference.blocks import sequence


def right_factor_a_C(params, cfg, context, query, remove=None):
    """Mistake: the right factor is a_C (with context) instead of a_x."""
    good = implicit_update(params, cfg, context, query, remove=remove)
    a_C = taps(params, cfg, sequence(np.asarray(context, float), np.asarray(query, float)))[0][-1]
    return Update(u=good.u, a=a_C, delta_b=good.delta_b)


def sign_flipped(params, cfg, context, query, remove=None):
    """Mistake: u = W (a_x − a_C)."""
    good = implicit_update(params, cfg, context, query, remove=remove)
    return Update(u=-good.u, a=good.a, delta_b=good.delta_b)


def no_bias_update(params, cfg, context, query, remove=None):
    """Mistake: forget Δb_out (P1 App. A / P2) for the residual kinds."""
    good = implicit_update(params, cfg, context, query, remove=remove)
    return Update(u=good.u, a=good.a, delta_b=np.zeros_like(good.delta_b))


IDENTITY_CHECKS = ["thm2.2 remove subset Y", "corollary Y=C", "stack composition (3 blocks, ours)"]


@pytest.mark.parametrize("mutant", [right_factor_a_C, sign_flipped])
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "parallel"])   # parallel: ΔW = 0, nothing to get wrong
@pytest.mark.parametrize("check", IDENTITY_CHECKS)
def test_wrong_update_fails_identity(monkeypatch, mutant, kind, check):
    s = identities.make_scenario(BlockConfig(d_model=5, d_mlp=20, kind=kind, activation="gelu"), n=12, seed=0)
    assert identities.run_check(check, s)["ok"]               # the real code passes …
    monkeypatch.setattr(identities, "implicit_update", mutant)
    monkeypatch.setattr(identities, "model_updates", lambda ps, c, Z: [
        mutant(p, c, H[:-1], H[-1]) for p, H in zip(ps, identities.model_forward(ps, c, Z))])
    row = identities.run_check(check, s)                      # … the mutant does not
    assert not row["ok"] and row["max_abs_err"] > 1e3 * row["tol"], row


@pytest.mark.parametrize("kind", ["p1-skip", "residual", "pre-ln", "post-ln", "gated", "parallel"])
def test_missing_bias_update_fails(monkeypatch, kind):
    s = identities.make_scenario(BlockConfig(d_model=5, d_mlp=20, kind=kind), n=12, seed=1)
    monkeypatch.setattr(identities, "implicit_update", no_bias_update)
    for check in ["thm2.2 remove subset Y", "corollary Y=C", "last-position Δb"]:
        assert not identities.run_check(check, s)["ok"], check


def test_wrong_step_size_fails_gd_recursion(monkeypatch):
    """Mistake in Prop. 3.1: h = 1/‖a‖ instead of 1/‖a‖²."""
    s = identities.make_scenario(BlockConfig(d_model=5, d_mlp=20, kind="plain"), n=10, seed=2)
    real = identities.trajectory

    def wrong_h(*a, **k):
        tr = real(*a, **k)
        return type(tr)(**{**tr.__dict__, "h": float(np.sqrt(tr.h))})

    monkeypatch.setattr(identities, "trajectory", wrong_h)
    assert not identities.run_check("GD recursion (Prop 3.1)", s)["ok"]
