"""Router.refit: projection, domains and heads learned again from the rows of the last fit
plus the feedback received since. The Routers here refit only when told to (``refit_growth``
0), so that what each refit learns is known; test_auto_refit.py covers the automatic ones."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import mixllm
from mixllm.config import RouterConfig
from mixllm.routing import persistence
from mixllm.routing.router import Router
from mixllm.serving.startup import gateway_router
from refit_data import POOL, dataset


def test_refit_learns_from_the_fit_rows_and_the_feedback() -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    router.fit(dataset(12))
    before = router.policy.inspect("small")["observations"]
    assert before == 12
    texts = dataset(20, offset=100).prompts
    for text in texts:
        decision = router.route(text, willingness_to_pay=1e-9)  # the cheap model, always
        easy = "two plus two" in text
        router.feedback(decision.id, quality=1.0 if easy else 0.0, output_tokens=50.0)
    # Feedback teaches the arm online; a refit learns the 12 rows and the 20 answers anew.
    assert router.policy.inspect("small")["observations"] == 32
    report = router.refit()
    assert report.rows == 32
    assert report.rows_per_model == {"small": 32, "big": 12}
    assert router.policy.inspect("small")["observations"] == 32
    # Learned: nothing is refitted twice.
    again = router.refit()
    assert again.rows == 32


def test_binary_feedback_is_relearned_as_one_or_zero() -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    router.fit(dataset(4))
    decision = router.route("Prove the Riemann hypothesis, case 7?", willingness_to_pay=1e-9)
    router.feedback(decision.id, satisfied=False)
    report = router.refit()
    assert report.rows == 5 and report.rows_per_model[decision.model] == 5


def feedback_on(router: Router, n: int, offset: int) -> None:
    for text in dataset(n, offset=offset).prompts:
        decision = router.route(text, willingness_to_pay=1e-9)
        router.feedback(decision.id, quality=float("two plus two" in text), output_tokens=40.0)


def assert_same_arms(first: Router, second: Router) -> None:
    assert first.models == second.models
    assert first.config == second.config
    for name in first.models:
        mine, theirs = first.policy.inspect(name), second.policy.inspect(name)
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            if isinstance(value, (int, float, list, np.ndarray)) and not isinstance(value, bool):
                np.testing.assert_allclose(theirs[key], value, rtol=1e-9, atol=0, err_msg=key)
            else:
                assert theirs[key] == value, key


def test_a_loaded_router_refits_as_the_saved_one_would(tmp_path) -> None:
    # Enough rows for the ridges to be cross-validated: the loaded Router chooses them again.
    saved = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    saved.fit(dataset(24))
    feedback_on(saved, 8, offset=100)
    loaded = Router.load(saved.save(tmp_path / "s").parent)
    mine, theirs = saved.refit(), loaded.refit()
    assert mine.rows == theirs.rows == 32
    # The ridges are cross-validated again, as the saved Router would: same folds, same choice.
    assert {c.knob for c in mine.tuning} == {"ridge", "length_ridge"}
    assert theirs.tuning == mine.tuning
    assert_same_arms(saved, loaded)
    # The log was learned into the rows: saved and loaded again, nothing is learned twice.
    again = Router.load(loaded.save(tmp_path / "s").parent)
    assert again.refit().rows == 32
    assert_same_arms(saved, again)


def test_the_feedback_log_survives_a_restart(tmp_path) -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    router.fit(dataset(12))
    feedback_on(router, 5, offset=50)
    loaded = Router.load(router.save(tmp_path / "s").parent)
    feedback_on(loaded, 3, offset=80)
    assert loaded.refit().rows == 12 + 5 + 3


def without_refit_files(state: Path) -> None:
    """Makes a saved state look like one saved before the rows and the log were kept."""
    manifest = json.loads((state / "manifest.json").read_text())
    for name in ("training.npz", "feedback.json"):
        manifest["files"].pop(name, None)
        (state / name).unlink(missing_ok=True)
    del manifest["tuned"]
    (state / "manifest.json").write_text(json.dumps(manifest))


def test_a_state_saved_without_the_rows_refits_on_its_feedback_alone(tmp_path) -> None:
    fitted = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    fitted.fit(dataset(12))
    state = fitted.save(tmp_path / "s")
    without_refit_files(state)
    router = Router.load(state.parent)
    with pytest.raises(mixllm.InvalidInputError, match="nothing to learn from"):
        router.refit()
    for text in dataset(6, offset=50).prompts:
        router.feedback(router.route(text).id, quality=1.0)
    assert router.refit().rows == 6


def rewritten(state: Path, name: str, data: bytes) -> None:
    """Replaces a state file, with a manifest that vouches for the new bytes."""
    (state / name).write_bytes(data)
    manifest = json.loads((state / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (state / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("training.npz", b"not a zip", "unreadable rows file"),
        ("feedback.json", b"[1, 2]", "not a feedback log"),
        ("feedback.json", b'{"format": 1, "feedback": [["q", "small", NaN, null]]}', "finite"),
        ("feedback.json", b'{"format": 1, "feedback": [["q", "small", 1.0, -3]]}', "a count"),
    ],
)
def test_a_bad_refit_file_is_refused_naming_it(tmp_path, name, data, message) -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    router.fit(dataset(12))
    feedback_on(router, 2, offset=50)
    state = router.save(tmp_path / "s")
    rewritten(state, name, data)
    with pytest.raises(mixllm.StateFileError, match=f"{name}.*{message}"):
        Router.load(state.parent)


def test_too_many_logged_feedbacks_or_rows_too_large_are_refused(tmp_path, monkeypatch) -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0, feedback_log_size=3))
    router.fit(dataset(12))
    feedback_on(router, 2, offset=50)
    state = router.save(tmp_path / "s")
    entries = [["q", "small", 1.0, None]] * 4
    rewritten(state, "feedback.json", json.dumps({"format": 1, "feedback": entries}).encode())
    with pytest.raises(mixllm.StateFileError, match=r"feedback.json.*more than feedback_log_size"):
        Router.load(state.parent)
    larger = router.save(tmp_path / "t")
    monkeypatch.setattr(persistence, "MAX_TRAINING_BYTES", 100)
    with pytest.raises(mixllm.StateFileError, match=r"training.npz is .* bytes, more than"):
        Router.load(larger.parent)


def test_rows_past_the_bound_are_saved_without_with_a_warning(tmp_path, monkeypatch) -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    router.fit(dataset(12))
    feedback_on(router, 2, offset=50)
    monkeypatch.setattr(persistence, "MAX_TRAINING_BYTES", 100)
    with pytest.warns(mixllm.UnusedDataWarning, match="training.npz would be"):
        state = router.save(tmp_path / "s")
    assert not (state / "training.npz").exists()
    assert Router.load(state.parent).refit().rows == 2


def test_routing_goes_on_during_a_refit() -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    router.fit(dataset(40))
    for text in dataset(40, offset=100).prompts:
        router.feedback(router.route(text).id, quality=1.0)
    errors: list[BaseException] = []

    def route_many() -> None:
        try:
            for i in range(200):
                router.route(f"What is {i} plus {i}?")
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=route_many)
    worker.start()
    router.refit()
    worker.join()
    assert errors == []
    assert router.pending() > 0


def test_the_log_is_bounded() -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0, feedback_log_size=3))
    router.fit(dataset(4))
    for text in dataset(10, offset=10).prompts:
        router.feedback(router.route(text).id, quality=1.0)
    assert router.refit().rows == 4 + 3
    with pytest.raises(mixllm.ConfigError, match="feedback_log_size must be >= 0"):
        RouterConfig(models=POOL, feedback_log_size=-1)


def test_a_router_with_new_settings_refits_on_the_same_rows_and_log() -> None:
    router = Router(RouterConfig(models=POOL, dim=4, refit_growth=0.0))
    router.fit(dataset(12))
    feedback_on(router, 3, offset=50)
    cheaper = router.with_config(willingness_to_pay=1e-6)
    assert cheaper.refit().rows == 15


def test_a_restarted_gateway_refits_on_what_was_saved(tmp_path) -> None:
    urls = tuple(replace(m, base_url="http://127.0.0.1:1/v1") for m in POOL)
    router = Router(RouterConfig(models=urls, dim=4, refit_growth=0.0))
    router.fit(dataset(12))
    feedback_on(router, 3, offset=50)
    router.save(tmp_path / "state")
    path = tmp_path / "serve.toml"
    models = "".join(
        f'[[models]]\nname = "{m.name}"\nprice_in = {m.price_in}\nprice_out = {m.price_out}\n'
        f'base_url = "{m.base_url}"\n'
        for m in urls
    )
    # Both a new operating point and an [embedder] table rebuild the Router at start.
    path.write_text(
        f'[router]\nwillingness_to_pay = 0.01\n[embedder]\ntruncation = "head"\n{models}',
        encoding="utf-8",
    )
    restarted, _ = gateway_router(path, tmp_path / "state")
    assert restarted.refit().rows == 15
