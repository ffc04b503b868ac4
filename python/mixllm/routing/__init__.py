"""Routing: the `Router` (`router.py`) and its parts, one module per job: `route.py` (a query's
context and decision), `learning.py` (completion, cancellation, feedback), `fitting.py` (fit),
`refitting.py` (refit), `auto_refit.py` (refits as feedback grows), `pool_changes.py`,
`store_link.py` (replicas through Redis), `introspection.py`, `persistence.py` (save, and
reading saved states), with the state they share in `router_base.py`. Beside them: the
pending-decision ledger (`ledger.py`), per-request limits (`route_limits.py`), the embedding
batcher of `aroute` (`batching.py`), the operating-point calibration (`calibration.py`), the
ridges' cross-validation (`tuning.py`), the model catalog (`catalog.py`), prices learned from
logs (`pricing.py`) and the crash-safe state folder (`state_folder.py`)."""
