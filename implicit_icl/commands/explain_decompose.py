"""``implicit-icl explain --decompose``: the options read into ``models.decompose_report`` calls (no maths here).

The transfer's queries are ``--queries`` (space-separated tokens), else the bundled few-shot model's shown keys
(every other token of the context, from the first), else the context tokens that occur before the last context
token (so that the token after them is the induction answer), each once, the prompt's own query first. Given the
model's ``task`` (the command passes ``experiments.fewshot_task.seeded_prompts`` with ``--model fewshot``), the
figures are also averaged over ``--prompts N`` random prompts of it (as many pairs as TEXT shows, seeded by
``--baseline-seed``).
"""
from __future__ import annotations

import sys

import numpy as np

KL_TOLERANCE = 1e-10   # nats: the full-update distribution against the prompt's own, float64 round-off
KS = (1, 2, 4)         # patch sizes (each below the number of queries)


def _ids(model, text: str) -> tuple[np.ndarray, list]:
    ids, tokens = model.tokenize(text)
    if ids.size < 2:
        raise ValueError(f"TEXT must hold a context and a query (at least 2 tokens), got {tokens}")
    return ids, tokens


def default_queries(model_name: str, ids: np.ndarray) -> list[int]:
    """The transfer's queries for the prompt ``ids`` (module docstring), the prompt's own query first."""
    context, query = [int(i) for i in ids[:-1]], int(ids[-1])
    pool = context[0::2] if model_name == "fewshot" else context[:-1]
    out = [query]
    for t in pool:
        if t not in out:
            out.append(t)
    return out


def _queries(args, model, ids) -> list[int]:
    if args.queries is None:
        return default_queries(args.model, ids)
    out = [int(ids[-1])]
    for word in args.queries.split():
        q, toks = model.tokenize(word)
        if q.size != 1:
            raise ValueError(f"--queries: {word!r} is {q.size} tokens {toks}, not one token")
        if int(q[0]) not in out:
            out.append(int(q[0]))
    return out


def explain_decompose(args, model, task=None) -> tuple[dict, list, bool]:
    """``(report, texts, ok)`` for ``explain --decompose`` (``ok``: the full-update KL is round-off, trained and
    untrained, for the prompt and for every prompt of the task). ``task(n, n_pairs, seed) -> (ids, description)``:
    ``n`` random prompts of the model's task with ``n_pairs`` shown pairs (their queries: its shown keys), or None."""
    from implicit_icl.models.bundled import describe
    from implicit_icl.models.decompose import check_causal_lm
    from implicit_icl.models.decompose_report import identity_max_kl, one_prompt, over_prompts, text, write_report

    check_causal_lm(model)
    name = describe(model, args.model)
    ids, tokens = _ids(model, args.text)
    queries = _queries(args, model, ids)
    result = one_prompt(model, ids, queries, seed=args.baseline_seed)
    report = {"model": name, "path": str(model.path), "text": args.text, "tokens": tokens,
              "query_tokens": [model.decode([q]) for q in queries], "prompt": result, "task": None,
              "kl_tolerance": KL_TOLERANCE}
    texts = [text(result, f"{name} · {args.text!r} · next token after {tokens[-1]!r}")]
    if task is not None:
        n = args.prompts or 50
        task_ids, what = task(n, (len(ids) - 1) // 2, args.baseline_seed)
        prompts = [(p, default_queries("fewshot", p)) for p in task_ids]
        print(f"explain --decompose: {n} random prompts of the task …", file=sys.stderr, flush=True)
        from .explain_corpus import _one_blas_thread

        with _one_blas_thread():                     # small products: one BLAS thread is faster on a shared machine
            report["task"] = over_prompts(model, prompts, seed=args.baseline_seed) | {"what": what}
        texts.append(text(report["task"], f"means over {n} random prompts of the task ({what})"))
    kls = [identity_max_kl(result)]                   # the prompt's full update and each transfer query's own
    if report["task"] is not None:                    # the identity on every prompt of the task, not on their mean
        kls.append(report["task"]["identity_max_kl"])
    ok = all(k <= KL_TOLERANCE for k in kls)
    report["ok"] = bool(ok)
    if args.report:
        try:
            written = write_report(args.report, report)
        except OSError as exc:
            raise ValueError(f"--report: cannot write {args.report}: {exc}") from None
        print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return report, texts, ok
