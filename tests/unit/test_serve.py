"""serve's worker loop: a failing metric never stops a worker; a signal always ends the process in time."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import BusError
from winnow.core.domain.records import Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.topics import create_topics
from winnow.core.loop.trainer import Trainer, model_folder
from winnow.services.serve import METRIC_ERRORS, Worker, install_signal_handlers, measure_until, run_worker


class LagDuringOutage:
    """The trainer's real consumer, except that the lag query fails as it does while the broker is down."""

    def __init__(self, consumer) -> None:
        self.consumer = consumer
        self.lag_calls = 0

    def lag(self) -> int:
        self.lag_calls += 1
        raise BusError("lag: broker unreachable")

    def __getattr__(self, name: str):
        return getattr(self.consumer, name)


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_a_failing_lag_metric_never_stops_the_worker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    project = Project("p", ("a", "b"))
    store.create_project(project)
    create_topics(bus, "p", 1)
    trainer = Trainer(bus, store, project, LoopConfig(), tmp_path / "models")
    outage = LagDuringOutage(trainer.consumer)
    trainer.consumer = outage
    worker = Worker("trainer", trainer)
    steps = []
    stepping = worker.step
    worker.step = lambda timeout_s=0.5: steps.append(1) or stepping(timeout_s=0.01)  # type: ignore[method-assign]
    stop, failures = threading.Event(), []
    errors_before = METRIC_ERRORS.labels("trainer", "p")._value.get()
    threads = [threading.Thread(target=run_worker, args=(worker, stop, failures)),
               threading.Thread(target=measure_until, args=([worker], store, stop, 0.02))]
    with caplog.at_level(logging.WARNING, logger="winnow.services.serve"):
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: outage.lag_calls >= 5)
            counted = len(steps)
            wait_until(lambda: len(steps) > counted + 5)  # still stepping after the failures
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert not failures
    assert METRIC_ERRORS.labels("trainer", "p")._value.get() - errors_before >= 5
    assert "consumer lag not measured service=trainer project=p error=BusError" in caplog.text
    trainer.close()
    bus.close()
    store.close()


def test_a_signal_sets_stop_and_a_watchdog_ends_the_process_after_the_grace_period() -> None:
    stop, exits = threading.Event(), []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        install_signal_handlers(stop, grace_s=0.3, hard_exit=exits.append)
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: stop.is_set(), 5)
        wait_until(lambda: exits, 5)
        assert exits == [0.3] and time.monotonic() - sent >= 0.3
        os.kill(os.getpid(), signal.SIGINT)  # a second signal: at once
        wait_until(lambda: len(exits) == 2, 5)
        assert exits[1] == 0.0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("name", ["../../../x", "..", "a/../../b", "/etc/passwd", ".", "\x00", "é/.."])
def test_model_folders_never_leave_models_dir(tmp_path: Path, name: str) -> None:
    models = tmp_path / "models"
    folder = model_folder(models, name, "v0001-n100")
    assert folder.is_relative_to(models.resolve()) and folder.parent.parent == models.resolve()
    assert folder.name == "v0001-n100"
    assert model_folder(models, name, "v2").parent == folder.parent  # one folder per project
    assert model_folder(models, name + "!", "v1").parent != folder.parent


def test_the_trainer_writes_into_the_derived_folder_inside_models_dir(tmp_path: Path) -> None:
    """Store and bus refuse a name like ``../../../x`` (so a Trainer cannot even subscribe with one); the
    trainer's folder comes from ``model_folder`` anyway, which the test above gives the hostile names."""
    import numpy as np
    from winnow.core.domain.records import Item, Label
    from winnow.core.domain.settings import TrainConfig

    name = "p.v2"
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    project = Project(name, ("a", "b"))
    store.create_project(project)
    create_topics(bus, name, 1)
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(40)]
    y = rng.integers(0, 2, len(ids))
    x = rng.standard_normal((len(ids), 8)).astype(np.float32) + 3 * np.eye(8, dtype=np.float32)[y]
    store.add_items([Item(name, i, f"text {i}", 0.0) for i in ids])
    store.put_embeddings(name, ids, x / np.linalg.norm(x, axis=1, keepdims=True))
    store.put_labels([Label(name, i, project.classes[k], "human", "ann", 1.0, None, "majority", "v1", 0.0,
                            f"{i}:labeling") for i, k in zip(ids, y)])
    models = tmp_path / "models"
    config = LoopConfig(first_model_labels=20, train=TrainConfig(folds=3, min_support=5))
    trainer = Trainer(bus, store, project, config, models)
    model = trainer.maybe_train(force=True)
    assert model is not None and Path(model.path) == model_folder(models, name, model.version)
    assert Path(model.path).parent.parent == models.resolve() and (Path(model.path) / "meta.json").is_file()
    trainer.close()
    bus.close()
    store.close()


def test_label_metrics_failing_with_the_store_are_logged_not_raised(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    store.create_project(Project("p", ("a", "b")))
    create_topics(bus, "p", 1)
    trainer = Trainer(bus, store, store.get_project("p"), LoopConfig(), tmp_path / "models")
    worker = Worker("trainer", trainer)
    worker.measure_labels(store)  # no labels yet: nothing to say, nothing raised
    store.close()  # the database is gone
    errors_before = METRIC_ERRORS.labels("trainer", "p")._value.get()
    with caplog.at_level(logging.WARNING, logger="winnow.services.serve"):
        worker.measure_labels(store)
    assert METRIC_ERRORS.labels("trainer", "p")._value.get() == errors_before + 1
    assert "label metrics not measured service=trainer project=p" in caplog.text
    trainer.close()
    bus.close()


def test_the_trainers_gauges_show_open_tasks_bounds_and_audit_agreement(tmp_path: Path) -> None:
    from winnow.core.domain.records import Annotation, Item, Label, Task
    from winnow.services.metrics import AUDIT_AGREEMENT, CERTIFIED_ACCURACY, HUMAN_FRACTION, OPEN_TASKS

    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    store.create_project(Project("gauged", ("a", "b")))
    create_topics(bus, "gauged", 1)
    store.add_items([Item("gauged", f"i{k}", f"text {k}", 1.0) for k in range(4)])
    store.add_tasks([Task("gauged", "i0", 0.5, "v1", 1.0, "audit", 0.5, "a", "auto_accept"),
                     Task("gauged", "i1", 0.5, "v1", 1.0, "audit", 0.5, "a", "auto_accept"),
                     Task("gauged", "i2", 0.5, None, 1.0)])
    for item_id, answer in (("i0", "a"), ("i1", "b")):  # one check agrees with the model, one does not
        store.add_annotation(Annotation("gauged", item_id, "ann", answer, 2.0))
        store.put_label(Label("gauged", item_id, answer, "human", "ann", 1.0, None, "single", "v1", 2.0,
                              f"{item_id}:h"))
    trainer = Trainer(bus, store, store.get_project("gauged"), LoopConfig(), tmp_path / "models")
    Worker("trainer", trainer).measure_labels(store)
    assert OPEN_TASKS.labels("gauged")._value.get() == 1
    assert AUDIT_AGREEMENT.labels("gauged")._value.get() == 0.5
    assert HUMAN_FRACTION.labels("gauged")._value.get() == 1.0
    from winnow.core.loop.quality import certified_quality

    bound = certified_quality(store, "gauged").accuracy_lower_bound
    assert bound is not None and CERTIFIED_ACCURACY.labels("gauged")._value.get() == bound
    trainer.close()
    bus.close()
    store.close()


def test_serving_prelabel_with_an_encoder_that_is_not_there_is_refused_before_anything_opens(tmp_path: Path) -> None:
    from winnow.core.domain.errors import InvalidInput
    from winnow.core.domain.settings import RuntimeConfig, ServeConfig, Settings
    from winnow.services.serve import serve

    bus = tmp_path / "bus.sqlite"
    settings = Settings(runtime=RuntimeConfig(encoder=str(tmp_path / "no-such-encoder")),
                        serve=ServeConfig(bus_url=f"sqlite:///{bus}", store_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                                          projects=("p",)))
    with pytest.raises(InvalidInput) as e:
        serve(settings, ["prelabel"], stop=threading.Event())
    assert e.value.field == "encoder" and not bus.exists()


def test_a_worker_thread_runs_faiss_on_the_threads_it_is_given(tmp_path: Path) -> None:
    """OpenMP keeps its thread count per thread: the worker's own thread sets it (``--faiss-threads``),
    so the selector's clustering and searches in that thread run on that many threads, whatever the
    main thread has."""
    import faiss

    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    project = Project("p", ("a", "b"))
    store.create_project(project)
    create_topics(bus, "p", 1)
    trainer = Trainer(bus, store, project, LoopConfig(), tmp_path / "models")
    worker, stop, seen = Worker("trainer", trainer), threading.Event(), []

    def step(timeout_s=0.5):
        seen.append(faiss.omp_get_max_threads())
        stop.set()
        return 0

    worker.step = step  # type: ignore[method-assign]
    main = faiss.omp_get_max_threads()
    for threads in (1, 3):
        stop.clear()
        thread = threading.Thread(target=run_worker, args=(worker, stop, [], threads))
        thread.start()
        thread.join(10)
    assert seen == [1, 3] and faiss.omp_get_max_threads() == main
    trainer.close()
    bus.close()
    store.close()
