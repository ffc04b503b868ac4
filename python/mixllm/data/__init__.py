"""Routing data: one in-memory type, :class:`RoutingDataset`, and the loaders that fill it.

A dataset holds ``n`` queries and ``K`` models. For every (query, model) pair it may hold the
model's quality (a score in [0, 1] for RouterBench), the dollar cost of the call, its output
tokens and its latency; NaN means "not observed" (a logged stream only sees the chosen model).

Sources:

* :func:`load_routerbench_csv` -- RouterBench rows as CSV files ``<bench>_{train,test}.csv``
  (the layout RouterDC published). Prompts and responses are stringified Python lists; rows
  with any missing model score are dropped, as RouterBench's own quirk rows need.
* :func:`load_routerbench` -- the published RouterBench pickles (``routerbench_0shot.pkl``,
  ``routerbench_5shot.pkl``) from the Hugging Face dataset ``withmartian/routerbench``,
  downloaded and cached by ``huggingface_hub`` (``pip install 'mixllm[routerbench]'``).
  Unpickling runs code, so a pickle, downloaded or local, is read only with
  ``allow_pickle=True`` or a pinned ``sha256``.
* :func:`load_jsonl` / :func:`save_jsonl` -- one JSON object per query, the format for your
  own logs (``docs/data-format.md``).

RouterBench carries no token counts. Both RouterBench loaders count prompt and output tokens
with the embedder's tokenizer (all-MiniLM-L6-v2's WordPiece, :func:`count_tokens`) and mark the
dataset ``tokens_counted=True``. Those counts are not what each LLM's own tokenizer would give
(a BPE tokenizer splits code and rare words differently), so prices fitted or applied on them
are in "MiniLM tokens"; ``docs/model-catalog.md`` measures the gap per model.
"""

from mixllm.data.dataset import TEST_SPLIT_SEED, RoutingDataset, split_train_test, validation_split
from mixllm.data.jsonl import PriceLike, load_jsonl, save_jsonl
from mixllm.data.routerbench import load_routerbench, load_routerbench_csv
from mixllm.data.tokens import count_tokens, estimate_tokens
from mixllm.errors import DatasetUnavailableError

__all__ = [
    "TEST_SPLIT_SEED",
    "DatasetUnavailableError",
    "PriceLike",
    "RoutingDataset",
    "count_tokens",
    "estimate_tokens",
    "load_jsonl",
    "load_routerbench",
    "load_routerbench_csv",
    "save_jsonl",
    "split_train_test",
    "validation_split",
]
