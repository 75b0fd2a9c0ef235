"""The GPU run: what a borrowed GPU machine measures in one go, against its own CPU in the same run.

Sections, each on its own (one that fails records its error and the others still run, since a
borrowed machine is lent for minutes):

- ``encoder``: sentences/s of the encoder on ONNX Runtime's CPU provider (the baseline), PyTorch
  fp16 on CUDA, and ONNX Runtime's CUDA and TensorRT providers where the installed ONNX Runtime has
  them (else the reason it could not run), each with its cosine to the CPU vectors;
- ``selection``: exact k-center (1,000 picks after 1% labeled anchors) on the CPU path and on CUDA,
  with both coverages, and spherical k-means on CUDA against FAISS on the CPU (where FAISS is
  installed), on the pool benchmark's synthetic pool (``bench.select``);
- ``pipeline``: the embedded loop's throughput (``bench.throughput``) with the encoder on CUDA, and
  its ratio to the model alone;
- ``gpu_memory_mb``: each section's peak of torch's CUDA allocations.

Without a GPU the CUDA parts say so and the CPU parts still run (the unit tests run it tiny).
``bench/gpu.sh`` prepares what the GPU image lacks and runs this there.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.data.datasets import Dataset, banking77
from winnow.core.select.gpu import cuda_count

PROVIDERS = {"onnx-cuda": "CUDAExecutionProvider", "onnx-tensorrt": "TensorrtExecutionProvider"}


def _gpu() -> dict:
    if not cuda_count():
        return {"cuda": False}
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "torch_cuda": torch.version.cuda}


def _reset_peak() -> None:
    if cuda_count():
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float | None:
    if not cuda_count():
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _timed(encoder, texts: list[str]) -> tuple[float, np.ndarray]:
    encoder.encode(texts[:256])  # warm-up: sessions, kernels, allocations
    started = time.perf_counter()
    vectors = encoder.encode(texts)
    return len(texts) / (time.perf_counter() - started), vectors


def encoder_section(texts: list[str], cpu_texts: int, encoder: str, cache: Path) -> dict:
    """Sentences/s per engine, the CPU's ONNX Runtime first (the baseline of every ratio)."""
    import onnxruntime as ort
    from winnow.core.ml.encoder import OnnxEncoder, TorchEncoder, encoder_spec, export_onnx, make_encoder

    spec = encoder_spec(encoder)
    out: dict = {"encoder": spec.name, "texts": len(texts), "cpu_texts": cpu_texts,
                 "onnxruntime_providers": ort.get_available_providers(), "engines": {}}
    cpu = make_encoder(spec, "onnx", cache, "cpu")
    per_s, reference = _timed(cpu, texts[:cpu_texts])
    out["engines"]["onnx-cpu"] = {"sentences_per_s": round(per_s, 1)}

    def measure(name: str, build: Callable[[], object]) -> None:
        _reset_peak()
        try:
            engine = build()
            rate, vectors = _timed(engine, texts)
            cosine = (vectors[:cpu_texts] * reference).sum(1)
            out["engines"][name] = {"sentences_per_s": round(rate, 1), "ratio_to_cpu": round(rate / per_s, 2),
                                    "cosine_to_cpu_min": round(float(cosine.min()), 5),
                                    "gpu_memory_mb": _peak_mb()}
        except Exception as e:  # noqa: BLE001 (a borrowed machine reports what failed and goes on)
            out["engines"][name] = {"skipped": f"{type(e).__name__}: {e}"[:300]}

    if cuda_count():
        measure("torch-cuda-fp16", lambda: TorchEncoder("cuda", max_batch=256, max_tokens=65536, spec=spec))
    else:
        out["engines"]["torch-cuda-fp16"] = {"skipped": "no CUDA device visible to torch"}
    for name, provider in PROVIDERS.items():
        if provider not in ort.get_available_providers():
            out["engines"][name] = {"skipped": f"the installed onnxruntime has no {provider}"}
        else:  # TensorRT builds an engine per input shape on first sight: the warm-up pays part of it
            measure(name, lambda trt=name == "onnx-tensorrt": OnnxEncoder(
                export_onnx(cache, spec), "cuda", max_batch=256, max_tokens=65536, spec=spec, tensorrt=trt))
    return out


def selection_section(size: int, budget: int, clusters: int, seed: int) -> dict:
    """k-center on the CPU path and on CUDA, k-means on CUDA and with FAISS on the CPU, one pool."""
    from winnow.bench.select import coverage, pool
    from winnow.core.select.gpu import farthest_first_cuda, kmeans_cuda, max_similarity_cuda
    from winnow.core.select.index import max_similarity_to
    from winnow.core.select.strategies import farthest_first

    x, labeled = pool(size, seed)
    free = np.setdiff1d(np.arange(size), labeled)
    out: dict = {"n": size, "budget": budget, "anchors": len(labeled), "kcenter": {}, "kmeans": {"k": clusters}}
    for where in ("cpu", "cuda"):
        if where == "cuda" and not cuda_count():
            out["kcenter"][where] = {"skipped": "no CUDA device visible to torch"}
            continue
        _reset_peak()
        started = time.perf_counter()
        if where == "cpu":
            dist = 2.0 - 2.0 * max_similarity_to(x[free], x[labeled])
            picks = farthest_first(x[free], dist, budget)
        else:
            dist = 2.0 - 2.0 * max_similarity_cuda(x[free], x[labeled])
            picks = farthest_first_cuda(x[free], dist, budget)
        wall = time.perf_counter() - started
        cover_max, cover_mean = coverage(x, np.concatenate([labeled, free[picks]]))
        out["kcenter"][where] = {"wall_s": round(wall, 3), "coverage_max": cover_max, "coverage_mean": cover_mean,
                                 "gpu_memory_mb": _peak_mb() if where == "cuda" else None, "picks": picks}
    if "picks" in out["kcenter"].get("cuda", {}):
        cpu_picks, gpu_picks = out["kcenter"]["cpu"]["picks"], out["kcenter"]["cuda"]["picks"]
        out["kcenter"]["same_picks"] = float((cpu_picks == gpu_picks).mean())
        out["kcenter"]["speedup"] = round(out["kcenter"]["cpu"]["wall_s"] / out["kcenter"]["cuda"]["wall_s"], 1)
    for run in out["kcenter"].values():
        if isinstance(run, dict):
            run.pop("picks", None)
    if cuda_count():
        _reset_peak()
        started = time.perf_counter()
        kmeans_cuda(x, clusters, seed)
        out["kmeans"]["cuda"] = {"wall_s": round(time.perf_counter() - started, 3), "gpu_memory_mb": _peak_mb()}
    else:
        out["kmeans"]["cuda"] = {"skipped": "no CUDA device visible to torch"}
    try:
        from winnow.core.select.index import kmeans

        started = time.perf_counter()
        kmeans(x, clusters, seed, device=-1)
        out["kmeans"]["faiss-cpu"] = {"wall_s": round(time.perf_counter() - started, 3)}
    except ImportError as e:
        out["kmeans"]["faiss-cpu"] = {"skipped": str(e)}
    return out


def pipeline_section(train: Dataset, test: Dataset, encoder: str, items: int, cache: Path) -> dict:
    """The embedded loop with the encoder on CUDA (PyTorch fp16), against the model alone."""
    if not cuda_count():
        return {"skipped": "no CUDA device visible to torch"}
    from winnow.bench.throughput import run_throughput_benchmark
    from winnow.core.ml.runtime import make_runtime

    _reset_peak()
    runtime = make_runtime("torch", "cuda", cache_dir=cache, embedding_cache=False, encoder=encoder)
    result = run_throughput_benchmark(train, test, runtime, cache / "throughput.json", items=items, repeats=1)
    keep = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    keep["gpu_memory_mb"] = _peak_mb()
    return keep


def half_copy(folder: Path, dest: Path) -> Path:
    """A copy of a BERT encoder folder with its weights in fp16 (MiniLM: 87 MB -> 44 MB), small enough to
    travel to a borrowed GPU machine; the tokenizer and configs are copied as they are. Returns ``dest``."""
    import shutil

    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name == "model.safetensors":
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dest / item.name, **(
            {"dirs_exist_ok": True} if item.is_dir() else {}))
    weights = load_file(folder / "model.safetensors")
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              dest / "model.safetensors")
    return dest


def _section(name: str, run: Callable[[], dict], progress: Callable[[str], None] | None) -> dict:
    if progress is not None:
        progress(name)
    started = time.perf_counter()
    try:
        out = run()
    except Exception as e:  # noqa: BLE001 (one failing section must not lose the others' numbers)
        out = {"error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-2000:]}
    out["section_s"] = round(time.perf_counter() - started, 1)
    return out


def run_gpu_benchmark(out: Path, encoder: str = "minilm", size: int = 1_000_000, budget: int = 1000,
                      clusters: int = 1000, texts: int = 20_000, cpu_texts: int = 2000, pipeline_items: int = 4000,
                      seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Run every section (module doc); write ``out`` (JSON) and its PNG; return the result."""
    started = time.perf_counter()
    train, test = banking77()
    pool_texts = list(train.texts)
    sample = [pool_texts[i % len(pool_texts)] + ("" if i < len(pool_texts) else f" ({i // len(pool_texts)})")
              for i in range(texts)]  # distinct texts: nothing is served from a cache
    result: dict = {"environment": environment(), "gpu": _gpu()}
    with tempfile.TemporaryDirectory(prefix="winnow-bench-gpu-") as folder:
        cache = Path(folder)
        sections = {
            "encoder": lambda: encoder_section(sample, min(cpu_texts, texts), encoder, cache),
            "selection": lambda: selection_section(size, budget, clusters, seed),
            "pipeline": lambda: pipeline_section(train, test, encoder, min(pipeline_items, len(train)), cache),
        }
        for name, run in sections.items():
            result[name] = _section(name, run, progress)
            result["total_s"] = round(time.perf_counter() - started, 1)
            write_json(out, result)  # after every section: a run cut short keeps what it measured
    plot_gpu(out.with_suffix(".png"), result)
    return result


def plot_gpu(path: Path, result: dict) -> None:
    """Sentences/s per engine and k-center seconds, CPU beside GPU."""
    fig, (left, right) = new_figure((11, 4), 2)
    engines = {k: v["sentences_per_s"] for k, v in result["encoder"].get("engines", {}).items()
               if "sentences_per_s" in v}
    left.bar(list(engines), list(engines.values()), color="#4c72b0")
    left.set_yscale("log")
    left.set_ylabel("sentences / s")
    left.set_title(f"encoder ({result['gpu'].get('name', 'no GPU')})")
    left.tick_params(axis="x", rotation=20)
    runs = {f"k-center {k}": v["wall_s"] for k, v in result["selection"].get("kcenter", {}).items()
            if isinstance(v, dict) and "wall_s" in v}
    runs |= {f"k-means {k}": v["wall_s"] for k, v in result["selection"].get("kmeans", {}).items()
             if isinstance(v, dict) and "wall_s" in v}
    right.bar(list(runs), list(runs.values()), color="#dd8452")
    right.set_yscale("log")
    right.set_ylabel("seconds")
    size = result["selection"].get("n")
    right.set_title(f"selection at {size:,}" if isinstance(size, int) else "selection (failed)")
    right.tick_params(axis="x", rotation=20)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """``python -m winnow.bench.gpu`` (what bench/gpu.sh runs where the CLI's service dependencies are
    not installed); ``winnow bench gpu`` takes the same options."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m winnow.bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--pipeline-items", type=int, default=4000)
    args = parser.parse_args(argv)
    run_gpu_benchmark(args.out, args.encoder, args.size, texts=args.texts, pipeline_items=args.pipeline_items,
                      progress=lambda name: print(f"gpu bench: {name}", flush=True))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
