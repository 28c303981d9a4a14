"""``implicit-icl verify``: check every identity of THEORY.md §10 on random blocks of every kind."""
from __future__ import annotations

import json
import sys
import textwrap
import time

from implicit_icl.commands import fail

HELP = "check every identity of the theorem on random blocks of every kind (exit 1 if any fails)"
DESCRIPTION = """\
Build random blocks of every kind (plain, p1-skip, residual, pre-ln, post-ln, and the modern gated and parallel
kinds of THEORY §11 with rotary positions, grouped-query heads, q/k norms and sliding windows) at several sizes,
seeds and context lengths, with and without a removed subset Y (a mask: kept tokens keep their positions), and check
each identity of THEORY.md §10 in float64:

  T_{W+ΔW(Y)}(C\\Y, x) = T_W(C, x),   ΔW(Y) = W ΔA(Y) aᵀ/‖a‖²  (P1 Thm 2.2; P2's generalisation, THEORY §3b)

plus rank 1, the norm identities, minimum norm, the GD recursion (P1 Prop. 3.1), the factorised dynamics
(P1 App. B), every position (P2's convention, the last token as query, and ours, each token's own) and the
composition of every block's last-token update through a stack (ours, THEORY §3c). Tolerance: 1e-12 × (1 + scale
of the values compared). The identity is exact by algebra: these checks guard the code, they are not evidence of
learning. They test the update's algebra and hold for any block, a wrongly implemented one included; the forward
pass is checked against HF BertModel, HF GPT2Model and torch's scaled_dot_product_attention by the test suite.

Examples:
  implicit-icl verify                             every kind, two seeds per shape (~2 s)
  implicit-icl verify --kind pre-ln --all-rows    one kind, one row per scenario
  implicit-icl verify --json - | jq .ok           the results as JSON on stdout

Exit status: 0 all passed; 1 a check failed (or raised: its row says what); 2 a bad argument.
"""


def add_arguments(parser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-' for stdout); "
                                                     "an existing file is replaced only if it is such a report")
    parser.add_argument("--force", action="store_true", help="let --json replace a file that is not a verify report")
    parser.add_argument("--seeds", type=int, default=2, metavar="N", help="random seeds per shape (default: 2)")
    parser.add_argument("--kind", action="append", metavar="KIND",
                        help="only this block kind (repeatable; default: all seven)")
    parser.add_argument("--all-rows", action="store_true", help="one row per scenario instead of per check × kind")


SHAPES = (
    # (d_model, d_mlp, n_heads, activation, causal, attn_bias, context lengths)
    (5, 20, 1, "relu", True, False, (1, 30)),
    (8, 16, 4, "gelu", False, True, (7,)),
    (1, 4, 1, "gelu", True, True, (12,)),
    (6, 24, 2, "gelu_tanh", True, True, (9,)),          # GPT-2's activation
)


def _is_report(path) -> bool:
    from implicit_icl.checkpoint import is_json_object_with

    return is_json_object_with("checks", "ok")(path)


REPORT_KIND = ("a report of implicit-icl verify (a JSON object with 'checks' and 'ok')", _is_report)


def scenarios(kinds, seeds: int):
    from implicit_icl.identities import MODERN_CONFIGS, make_scenario
    from implicit_icl.reference import BlockConfig
    from implicit_icl.reference.config import NORMED_KINDS

    for kind in kinds:
        for d, m, h, act, causal, bias, lengths in SHAPES:
            if kind in NORMED_KINDS and d == 1:
                continue   # the norm of a single feature is constant: a = N(·) carries no context
            cfg = BlockConfig(d_model=d, d_mlp=m, n_heads=h, kind=kind, activation=act, causal=causal, attn_bias=bias)
            for n in lengths:
                for seed in range(seeds):
                    yield make_scenario(cfg, n, seed)
        for name, kw in sorted(MODERN_CONFIGS.items()):      # rotary, grouped-query, q/k norm, windows (THEORY §11)
            if kw["kind"] == kind:
                for seed in range(seeds):
                    yield make_scenario(BlockConfig(d_model=6, d_mlp=10, **kw), 11, seed, label=f"{name} seed={seed}")


def run(args) -> int:
    from implicit_icl.identities import ALGEBRA_ONLY, CHECKS, FORWARD_CHECKED, MUST_EXCEED, run_check
    from implicit_icl.reference import KINDS

    kinds = args.kind or list(KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        return fail("verify", f"--kind must be one of {', '.join(KINDS)}; got {', '.join(bad)}")
    if args.seeds < 1:
        return fail("verify", "--seeds must be >= 1")
    if args.json is not None and args.json != "-":
        from implicit_icl.checkpoint import output_path_problem
        problem = output_path_problem(args.json, "--json", REPORT_KIND, force=args.force)
        if problem:
            return fail("verify", problem)
    out = sys.stderr if args.json == "-" else sys.stdout   # `--json -`: stdout holds the JSON alone
    t0 = time.perf_counter()
    rows, n_scenarios = [], 0
    for s in scenarios(kinds, args.seeds):
        n_scenarios += 1
        rows.extend(_run_check(run_check, name, s) for name in CHECKS)
    if not args.all_rows:
        merged: dict[tuple, dict] = {}
        for r in rows:
            key = (r["name"], r["kind"])
            m = merged.setdefault(key, dict(r))
            m["ok"] = m["ok"] and r["ok"]
            ratio, current = r["max_abs_err"] / r["tol"], m["max_abs_err"] / m["tol"]
            if (ratio < current) if r["name"] in MUST_EXCEED else (ratio > current):   # keep the worst case
                m.update(max_abs_err=r["max_abs_err"], tol=r["tol"], scenario=r["scenario"])
        shown = list(merged.values())
    else:
        shown = rows
    ok = all(r["ok"] for r in rows)
    print(f"{'check':38} {'kind':9} {'max abs err':>12} {'tol':>9}  ok", file=out)
    for r in shown:
        flag = "ok" if r["ok"] else "FAIL"
        print(f"{r['name']:38} {r['kind']:9} {r['max_abs_err']:12.2e} {r['tol']:9.1e}  {flag}", file=out)
    for r in rows:
        if "error" in r:
            print(f"FAIL {r['name']} ({r['kind']}, {r['scenario']}) raised {r['error']}", file=out)
    n_fail = sum(not r["ok"] for r in rows)
    print(f"\n{len(rows)} checks over {n_scenarios} scenarios in "
          f"{time.perf_counter() - t0:.1f} s: {'all passed' if ok else f'{n_fail} FAILED'}.", file=out)
    print("'query dependence' passes when x's update MISSES x′'s output by more than tol (updates depend on the query).",
          file=out)
    print(textwrap.fill(ALGEBRA_ONLY, 116) + "\n" + textwrap.fill(FORWARD_CHECKED, 116), file=out)
    if args.json:
        # rows: name, kind, scenario, max_abs_err, tol, ok (and error, for a check that raised)
        finite = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]  # no NaN
        text = json.dumps({"checks": finite, "ok": ok}, indent=1)
        if args.json == "-":
            print(text)
        else:
            from implicit_icl.checkpoint import atomic_write_bytes
            try:
                atomic_write_bytes(args.json, lambda f: f.write(text.encode("utf-8")))
            except OSError as exc:
                return fail("verify", f"--json: cannot write {args.json}: {exc}")
    return 0 if ok else 1


def _run_check(run_check, name, s) -> dict:
    """One check's row; a check that raises is a failed row that says what it raised (the other checks still run)."""
    try:
        return run_check(name, s)
    except Exception as exc:   # noqa: BLE001 - reported as a FAIL row, never hidden
        return {"name": name, "kind": s.cfg.kind, "scenario": s.label, "max_abs_err": float("nan"),
                "tol": float("nan"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}

