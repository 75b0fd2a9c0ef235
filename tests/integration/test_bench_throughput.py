"""The throughput benchmark on a tiny stream over the embedded bus: its JSON, its PNG, every item decided."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from winnow.bench.throughput import PRELABEL_BATCH, run_throughput_benchmark
from winnow.core.data.datasets import banking77
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.encoder import CachedEncoder, EmbeddingCache
from winnow.core.ml.runtime import OnnxRuntime, make_runtime
from winnow.services.cli import BENCH_BUS, BENCH_ITEMS, BENCH_REPEATS, LABELS_OUT, build_parser, given, main

pytestmark = pytest.mark.slow  # the real encoder (packaged weights) on Banking77 texts

ITEMS = 64


@pytest.fixture(scope="module")
def runtime():
    return make_runtime("onnx", device="cpu", embedding_cache=False)


def test_tiny_run_writes_every_key_and_decides_every_item(tmp_path: Path, runtime) -> None:
    train, test = banking77()
    out = tmp_path / "throughput.json"
    result = run_throughput_benchmark(train, test, runtime, out, items=ITEMS, repeats=2, head_labels=120)

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert out.with_suffix(".png").stat().st_size > 0
    for key in ("items", "pipeline_items_per_s", "model_only_items_per_s", "ratio", "bus", "details"):
        assert key in written
    assert written["items"] == ITEMS and written["bus"] == "sqlite"
    assert written["pipeline_items_per_s"] > 0 and written["model_only_items_per_s"] > 0 and written["ratio"] > 0
    details = written["details"]
    assert details["seed"] == 0 and details["repeats"] == 2 and len(details["runs"]) == 2
    assert details["batch_sizes"]["prelabel_poll_max_messages"] == PRELABEL_BATCH
    assert "cpus" in details["environment"] and "versions" in details["environment"]
    for run in details["runs"]:
        pipeline = run["pipeline"]
        assert sum(pipeline["prelabel_batches"]) == ITEMS  # every item scored once
        assert sum(pipeline["selector_batches"]) == ITEMS
        decided = dict(pipeline["decided"])
        assert decided.pop("decided_twice") == 0 and sum(decided.values()) == ITEMS  # and decided once
        assert pipeline["wall_s"] > 0 and pipeline["items_per_s"] > 0 and pipeline["prelabel_predict_s"] > 0
        assert run["model_only"]["wall_s"] > 0 and run["model_only"]["items_per_s"] > 0


def test_a_caching_runtime_or_an_unknown_bus_is_refused_before_anything_is_written(tmp_path: Path, runtime) -> None:
    train, test = banking77()
    out = tmp_path / "throughput.json"
    cache = EmbeddingCache(tmp_path / "embeddings.sqlite", runtime.encoder.encoder_id)
    cached = OnnxRuntime(CachedEncoder(runtime.encoder, cache))
    with pytest.raises(InvalidInput, match="runtime"):
        run_throughput_benchmark(train, test, cached, out, items=ITEMS)
    with pytest.raises(InvalidInput, match="bus"):
        run_throughput_benchmark(train, test, runtime, out, items=ITEMS, bus_url="redis://localhost")
    assert main(["bench", "throughput", "--bus", "amqp://x", "--items", "8", "--out", str(out)]) == 2
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_throughput_flags_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINNOW_BENCH_ITEMS", "128")
    monkeypatch.setenv("WINNOW_BUS", "kafka://127.0.0.1:9092")
    monkeypatch.setenv("WINNOW_BENCH_OUT", "t.json")
    args = build_parser().parse_args(["bench", "throughput"])
    values = tuple(given(args, o) for o in (BENCH_ITEMS, BENCH_BUS, LABELS_OUT, BENCH_REPEATS))
    assert values == (128, "kafka://127.0.0.1:9092", Path("t.json"), 3)
