"""The few-shot key → value task of the bundled in-context learner (ours; issue 15 item 4). NumPy only.

Every prompt draws a fresh random mapping from ``N_KEYS`` key words (``a`` … ``p``) to ``N_VALUES`` value words
(``0`` … ``15``), each key's value uniform and independent. It shows ``k`` pairs and then a query key, written as
words: ``"a 3 c 7 f 1 c"`` → ``"7"``. Since the mapping is new in every prompt, nothing learned in the weights can
tell a key's value: only the context can (without it the best accuracy is chance, ``1/N_VALUES``).

- Training sequences (``training_batch``): ``n_pairs`` pairs whose keys are drawn *with* replacement, so keys
  repeat; the loss is the next-token loss at every key position (predicting its value). A key seen before has a
  determined value; a new one has none (its best prediction is uniform).
- Evaluation prompts (``eval_prompts``): ``k`` *distinct* keys, then a query drawn among the shown ones; ``k = 0``
  is the query alone.

The vocabulary is ``[UNK]``, the keys, the values (ids 0, 1..16, 17..32); ``tokenizer()`` is a ``tokenizers``
WordLevel tokenizer on whitespace, saved as ``tokenizer.json`` beside the model.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

N_KEYS = 16
N_VALUES = 16
UNK = "[UNK]"
KEYS = tuple(string.ascii_lowercase[:N_KEYS])
VALUES = tuple(str(v) for v in range(N_VALUES))
VOCAB = (UNK,) + KEYS + VALUES
KEY0, VALUE0 = 1, 1 + N_KEYS             # id of the first key, of the first value


def key_ids(keys: np.ndarray) -> np.ndarray:
    """Key indices ``0..N_KEYS−1`` → token ids."""
    return KEY0 + np.asarray(keys)


def value_ids(values: np.ndarray) -> np.ndarray:
    """Value indices ``0..N_VALUES−1`` → token ids."""
    return VALUE0 + np.asarray(values)


def interleave(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Token ids ``k_1 v_1 k_2 v_2 …`` from key and value indices ``(B, n)`` each: ``(B, 2n)`` int64."""
    B, n = keys.shape
    ids = np.empty((B, 2 * n), dtype=np.int64)
    ids[:, 0::2], ids[:, 1::2] = key_ids(keys), value_ids(values)
    return ids


def random_mappings(batch: int, rng: np.random.Generator) -> np.ndarray:
    """``(batch, N_KEYS)``: each prompt's value of every key, uniform and independent."""
    return rng.integers(0, N_VALUES, size=(batch, N_KEYS))


def training_batch(batch: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``(batch, 2·n_pairs)`` token ids of ``n_pairs`` pairs with keys drawn with replacement (module docstring);
    the targets are the values at the odd positions, predicted from the key before each."""
    mapping = random_mappings(batch, rng)
    keys = rng.integers(0, N_KEYS, size=(batch, n_pairs))
    return interleave(keys, np.take_along_axis(mapping, keys, axis=1))


@dataclass(frozen=True)
class Prompts:
    """``k`` shown pairs and a query. ``ids`` ``(B, 2k+1)`` the prompt with its context; ``alone`` ``(B, 1)`` the
    query without it; ``target`` ``(B,)`` the token id of the query's value."""

    k: int
    ids: np.ndarray
    alone: np.ndarray
    target: np.ndarray


def eval_prompts(k: int, batch: int, rng: np.random.Generator) -> Prompts:
    """``batch`` prompts of ``k`` distinct keys (``0 ≤ k ≤ N_KEYS``) and a query among them (any key for k = 0)."""
    if not 0 <= k <= N_KEYS:
        raise ValueError(f"k must lie in 0..{N_KEYS} (the number of distinct keys), got {k}")
    mapping = random_mappings(batch, rng)
    keys = np.argsort(rng.random((batch, N_KEYS)), axis=1)[:, :k]                      # k distinct keys each
    if k:
        query = np.take_along_axis(keys, rng.integers(0, k, size=(batch, 1)), axis=1)[:, 0]
    else:
        query = rng.integers(0, N_KEYS, size=batch)
    shown = interleave(keys, np.take_along_axis(mapping, keys, axis=1))
    alone = key_ids(query)[:, None]
    target = value_ids(mapping[np.arange(batch), query])
    return Prompts(k=k, ids=np.concatenate([shown, alone], axis=1), alone=alone, target=target)


def seeded_prompts(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, str]:
    """The ids ``(n, 2 n_pairs + 1)`` of ``n`` random prompts with ``n_pairs`` shown pairs (``eval_prompts`` seeded
    ``[seed, 15]``: what ``explain --decompose`` averages over), and how they were drawn."""
    p = eval_prompts(n_pairs, n, np.random.default_rng([seed, 15]))
    return p.ids, (f"{n_pairs} distinct key→value pairs and a query among them, a fresh mapping each, "
                   f"eval_prompts seeded [{seed}, 15]")


def prompt_text(ids) -> str:
    """The words of token ids, space-separated (what ``tokenizer().decode`` gives)."""
    return " ".join(VOCAB[int(i)] for i in np.asarray(ids).ravel())


def tokenizer():
    """A ``tokenizers`` WordLevel tokenizer of ``VOCAB`` on whitespace (unknown words → ``[UNK]``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)     # joins words with spaces
    return tok
