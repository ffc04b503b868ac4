"""Sharing a Router's learning with other replicas: attaching a store, and taking its
checkpoint when this replica falls behind (`mixllm.store`, docs/scaling.md)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, cast

from mixllm._core import Policy, UnknownModelError
from mixllm.errors import ConfigError
from mixllm.routing.persistence import check_knobs
from mixllm.routing.pool_changes import PoolChanges

if TYPE_CHECKING:
    from mixllm.routing.router import Router
    from mixllm.store import RedisStore


class StoreLink(PoolChanges):
    """The Router's `attach_store` and what its store calls back."""

    def attach_store(self, store: RedisStore) -> None:
        """Shares this Router's learning with the other replicas attached to the same store:
        from now on every observation `feedback` accepts is in the store before it returns, and
        the other replicas' observations are learned as they arrive. When the store holds a
        checkpoint, this Router's arms are replaced by it first (its pool and settings must be
        this Router's; its prices and speeds are this Router's configuration's, and the other
        replicas take those too). Attach before routing: decisions already pending are
        refused."""
        with self._lock:
            if self._store is not None:
                raise ConfigError("this Router already has a store")
            if self._ledger:
                raise ConfigError("attach the store before routing: decisions are pending")
            if self._fits_running or self._refit_scheduled:
                raise ConfigError(
                    "attach_store is refused while a refit runs (or a fit): its new arms would "
                    "replace the ones the store shares; attach once it is done (wait_for_refit)"
                )
            checkpoint = store.load_checkpoint(self._policy.dim, self._saved_position)
            configured = self._config.models
            if checkpoint is not None:
                policy = checkpoint.policy
                if policy.models != self._policy.models:
                    raise ConfigError(
                        f"the store's checkpoint has models {policy.models}, this Router "
                        f"{self._policy.models}"
                    )
                check_knobs(self._config, policy)
                self._policy = policy
                self._arms = dict(checkpoint.arms)
                self._contexts.clear()
                self._pool_generation += 1
            self._store = store
        try:
            store.start(cast("Router", self))  # the Router is the one class using this part
        except BaseException:
            self._store = None
            raise
        # The configured models replace what the checkpoint and the stream said of them, on
        # every replica: the configuration is what `config`, `describe_models` and `save` show.
        for model in configured:
            if not self._configured_as(model):
                with contextlib.suppress(UnknownModelError):  # removed meanwhile, elsewhere
                    self.update_model(model)

    def _adopt_checkpoint(self, policy: Policy, arms: dict[str, str]) -> None:
        """The store's checkpoint replaces the arms (this replica fell behind the stream's
        trimming); the pending decisions made with arms it still has carry over to them."""
        with self._lock:
            now = self._now()
            for pending in self._ledger:
                if (
                    pending.model in policy
                    and pending.current(self._policy)
                    and arms.get(pending.model, "") == pending.arm
                ):
                    pending.rebind(policy, now)
            self._policy = policy
            self._arms = dict(arms)
            self._pool_generation += 1

    def _arm_ids(self) -> dict[str, str]:
        """The arm ids that are not "" (what a checkpoint carries)."""
        with self._lock:
            return dict(self._arms)

    @property
    def store(self) -> RedisStore | None:
        return self._store
