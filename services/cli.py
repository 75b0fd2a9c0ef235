"""The `winnow` command: demo, benchmarks (and, in distributed mode, the services).

Every option falls back to a ``WINNOW_*`` environment variable, named in its help text.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from winnow.core.domain.errors import WinnowError


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"WINNOW_{name}", default)


def _opt(parser: argparse.ArgumentParser, flag: str, env: str, default: str | None, help_text: str, **kw) -> None:
    parser.add_argument(flag, default=_env(env, default), help=f"{help_text} (env WINNOW_{env}; default {default})", **kw)


def _budget(text: str) -> tuple[int, int]:
    """'25/100' -> 25 labels per 100 items."""
    try:
        labels, per = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must look like LABELS/ITEMS, e.g. 25/100, got {text!r}") from None
    return labels, per


def _common_loop_options(p: argparse.ArgumentParser) -> None:
    _opt(p, "--strategy", "STRATEGY", "cluster_margin", "selection strategy: random, uncertainty, kcenter, cluster_margin, badge")
    _opt(p, "--budget", "BUDGET", "25/100", "human label budget, LABELS/ITEMS", type=_budget)
    _opt(p, "--precision", "PRECISION", "0.98", "precision target for auto-accepted labels")
    _opt(p, "--engine", "ENGINE", "onnx", "inference engine: onnx or torch")
    _opt(p, "--cache-dir", "CACHE_DIR", None, "cache for the ONNX export and embeddings (default ~/.cache/winnow)")
    _opt(p, "--seed", "SEED", "0", "seed of the stream order and every random choice")
    _opt(p, "--holdout-share", "HOLDOUT_SHARE", "0.15",
         "share of the human budget spent on uniformly drawn items that calibrate the auto-accept threshold")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="winnow", description="Active-learning labeling orchestration.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stage's decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="stream Banking77 through the loop with simulated annotators")
    _common_loop_options(demo)
    _opt(demo, "--items", "DEMO_ITEMS", None, "stream only this many rows (all 10,003 by default)")
    _opt(demo, "--noise", "DEMO_NOISE", "0.02,0.05,0.10", "error rate of each simulated annotator, comma-separated")
    _opt(demo, "--overlap", "OVERLAP", "1", "distinct annotators per picked item (consensus when > 1)")
    _opt(demo, "--gold", "GOLD", "20", "rows given as known answers (gold) to measure annotators")
    _opt(demo, "--out-dir", "OUT_DIR", "winnow-demo", "where the demo writes its store, models, JSON and PNG")

    bench = sub.add_parser("bench", help="benchmarks (JSON + PNG results)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    labels = bench_sub.add_parser("labels", help="label economics on a CSV, against random selection")
    _common_loop_options(labels)
    labels.add_argument("--csv", help="labeled CSV to stream (default: bundled Banking77 train)")
    labels.add_argument("--text-col", default="text", help="text column (default text)")
    labels.add_argument("--label-col", default="category", help="label column (default category)")
    labels.add_argument("--test-csv", help="labeled CSV for model test accuracy (default with no --csv: Banking77 test)")
    labels.add_argument("--out", required=True, help="result JSON path; the PNG is written beside it")
    throughput = bench_sub.add_parser("throughput", help="items/s through the whole pipeline against the model alone")
    _opt(throughput, "--bus", "BUS", None,
         "kafka://HOST:PORT, or sqlite for the embedded log (each run gets a fresh one in a temp dir)")
    _opt(throughput, "--items", "BENCH_ITEMS", "2000",
         "items per run (the first of a seeded shuffle of Banking77 train)", type=int)
    _opt(throughput, "--repeats", "BENCH_REPEATS", "3",
         "pipeline and model-only runs each, alternating (medians)", type=int)
    _opt(throughput, "--head-labels", "BENCH_HEAD_LABELS", "400",
         "Banking77 test rows the head is trained on before the runs", type=int)
    _opt(throughput, "--engine", "ENGINE", "onnx", "inference engine: onnx or torch")
    _opt(throughput, "--cache-dir", "CACHE_DIR", None, "cache for the ONNX export (default ~/.cache/winnow)")
    _opt(throughput, "--seed", "SEED", "0", "seed of the stream order and the head's training rows")
    _opt(throughput, "--profile-dir", "BENCH_PROFILE_DIR", None,
         "write cProfile stats of every pipeline thread here (slows the pipeline runs)")
    _opt(throughput, "--out", "BENCH_OUT", None, "result JSON path; the PNG is written beside it",
         required=_env("BENCH_OUT", None) is None)
    serve = sub.add_parser("serve", help="run one service (or all) until SIGTERM")
    serve.add_argument("service", choices=("ingest", "prelabel", "selector", "labeling", "trainer", "projects", "all"))
    _opt(serve, "--bus", "BUS", "sqlite:///winnow-data/bus.sqlite", "bus URL: kafka://HOST:PORT or sqlite:///PATH")
    _opt(serve, "--store", "STORE", "sqlite:///winnow-data/store.sqlite", "store URL: postgresql://... or sqlite:///PATH")
    _opt(serve, "--project", "PROJECT", None, "project(s) the workers consume, comma-separated")
    _opt(serve, "--grpc-host", "GRPC_HOST", "127.0.0.1", "address to bind")
    _opt(serve, "--grpc-port", "GRPC_PORT", "50051", "gRPC port (0 takes a free one)")
    _opt(serve, "--metrics-port", "METRICS_PORT", None, "Prometheus metrics port (0 takes a free one; unset: off)")
    _opt(serve, "--models-dir", "MODELS_DIR", "winnow-data/models", "where the trainer writes model versions")
    _opt(serve, "--engine", "ENGINE", "onnx", "inference engine: onnx or torch")
    _opt(serve, "--faiss-threads", "FAISS_THREADS", "1",
         "OpenMP threads for the selector's FAISS searches and clustering (1: the workers share the cores "
         "with the model, and a multi-threaded call stalls whenever the model preempts one of its threads)")
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from winnow.services.serve import ServeOptions, parse_services, project_names, serve

    serve(ServeOptions(
        services=parse_services(args.service), projects=project_names([args.project] if args.project else None),
        bus_url=args.bus, store_url=args.store, grpc_host=args.grpc_host, grpc_port=int(args.grpc_port),
        metrics_port=None if args.metrics_port is None else int(args.metrics_port),
        models_dir=Path(args.models_dir), engine=args.engine, faiss_threads=int(args.faiss_threads),
    ))
    return 0


def _project(name: str, classes: Sequence[str], args: argparse.Namespace, overlap: int = 1):
    from winnow.core.domain.records import Project

    labels, per = args.budget
    return Project(name, tuple(classes), labels, per, float(args.precision), args.strategy, overlap)


def _datasets(args: argparse.Namespace):
    from winnow.core.data.datasets import banking77, load_csv

    if args.csv is None:
        return banking77()
    train = load_csv(args.csv, args.text_col, args.label_col)
    test = load_csv(args.test_csv, args.text_col, args.label_col, classes=train.classes) if args.test_csv else None
    return train, test


def _loop_config(args: argparse.Namespace):
    from winnow.core.domain.settings import LoopConfig

    return LoopConfig(seed=int(args.seed), holdout_share=float(args.holdout_share))


def cmd_bench_labels(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from winnow.bench.labels import run_labels_benchmark
    from winnow.core.ml.runtime import make_runtime

    train, test = _datasets(args)  # validated before anything runs or is written
    runtime = make_runtime(args.engine, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    project = _project("bench", train.classes, args)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"{name:>7} items", total=total)
            bar.update(tasks[name], completed=done)

        result = run_labels_benchmark(train, test, runtime, Path(args.out), project,
                                      _loop_config(args), seed=int(args.seed), progress=progress)
    _print_table(console, result)
    console.print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from winnow.bench.throughput import run_throughput_benchmark
    from winnow.core.data.datasets import banking77
    from winnow.core.ml.runtime import make_runtime

    train, test = banking77()
    runtime = make_runtime(args.engine, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                           embedding_cache=False)  # the repeats encode the same texts
    console = Console(stderr=True)
    result = run_throughput_benchmark(
        train, test, runtime, Path(args.out), items=args.items, bus_url=args.bus, repeats=args.repeats,
        seed=int(args.seed), head_labels=args.head_labels,
        profile_dir=Path(args.profile_dir) if args.profile_dir else None, progress=console.print)
    table = Table(title=f"throughput, {result['items']} items, {result['bus']} bus")
    table.add_column("")
    table.add_column("items/s (median)", justify="right")
    table.add_row("whole pipeline", f"{result['pipeline_items_per_s']:.1f}")
    table.add_row("model only", f"{result['model_only_items_per_s']:.1f}")
    table.add_row("ratio", f"{result['ratio']:.3f}")
    console.print(table)
    console.print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _print_table(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title="label economics")
    table.add_column("")
    table.add_column("winnow", justify="right")
    table.add_column("random", justify="right")
    for key in ("items", "human_labels", "human_fraction", "final_label_accuracy", "auto_accept_precision",
                "model_test_accuracy", "wall_s"):
        cells = []
        for value in (result[key], result["random"][key]):
            cells.append("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        table.add_row(key, *cells)
    console.print(table)


def cmd_demo(args: argparse.Namespace) -> int:
    from winnow.services.demo import run_demo

    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "bench" and args.bench == "labels":
            return cmd_bench_labels(args)
        if args.command == "bench" and args.bench == "throughput":
            return cmd_bench_throughput(args)
        if args.command == "serve":
            return cmd_serve(args)
    except WinnowError as e:
        print(f"winnow: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
