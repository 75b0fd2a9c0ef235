"""The `winnow` command: demo, benchmarks and the services, with every bad value a one-line error.

Flags come from :mod:`winnow.core.domain.settings` (one :class:`Settings` object) plus a few
command-specific options here; each falls back to a ``WINNOW_*`` environment variable, named in
its help text. argparse only splits the command line: every value is typed and checked by the
settings' options, so a bad flag or variable ends as ``winnow: error: --seed: 'abc' is not an
integer`` with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn, Sequence

from winnow.core.access.roles import ROLES
from winnow.core.domain.errors import InvalidInput, WinnowError
from winnow.core.domain.validation import STRATEGIES
from winnow.core.domain.settings import (
    COMPARED_ENCODERS,
    SERVICES,
    LoopConfig,
    Option,
    RuntimeConfig,
    ServeConfig,
    Settings,
    options,
    resolve,
    value_of,
)

USAGE_ERROR = 2

# command-specific options (a project's schema in the demo and benchmarks, result paths): not settings
STRATEGY = Option("strategy", str, f"selection strategy: {', '.join(STRATEGIES)}", "cluster_margin",
                  choices=STRATEGIES)
BUDGET = Option("budget", str, "human label budget, LABELS/ITEMS", "25/100", metavar="LABELS/ITEMS")
PRECISION = Option("precision", float, "precision target for auto-accepted labels", 0.98, low=0.0, high=1.0,
                   low_open=True, high_open=True)
DEMO_ITEMS = Option("items", int, "stream only this many rows (all 10,003 by default)", None, env_name="DEMO_ITEMS",
                    low=1, optional=True)
DEMO_NOISE = Option("noise", tuple, "error rate of each simulated annotator, comma-separated",
                    ("0.02", "0.05", "0.10"), env_name="DEMO_NOISE")
NOISE_RATE = Option("noise", float, "error rate of one simulated annotator", low=0.0, high=1.0)
OVERLAP = Option("overlap", int, "most people asked per item (adaptive: a second or third answer only where answers disagree)", 1, low=1, high=16)
# the demo's people are imperfect: one answer each could never certify a 0.98 threshold (``DemoOptions.overlap``)
DEMO_OVERLAP = dataclasses.replace(OVERLAP, default=3, help="most people asked per item (adaptive: a second or third "
                                   "answer only where answers disagree, or one contradicts a confident model; with the "
                                   "demo's imperfect annotators one answer each could never certify a 0.98 threshold)")
GOLD = Option("gold", int, "rows given as known answers (gold) to measure annotators", 20, low=0)
OUT_DIR = Option("out_dir", Path, "where the demo writes its store, models, JSON and PNG (a new or empty folder, "
                 "or an earlier demo's output)", Path("winnow-demo"))
SEEDS = Option("seeds", int, "seeds to run, from --seed on: each reported, then the mean and the worst", 1, low=1,
               high=100)
BENCH_NOISE = Option("noise", tuple, "error rate of each simulated annotator, comma-separated (one annotator each)",
                     ("0.0",))
BENCH_GOLD = Option("gold", int, "rows given as known answers (gold) to measure annotators", 0, low=0)
BENCH_ENCODERS = Option("encoders", tuple, "encoders to compare, comma-separated: minilm, bge-small, mpnet, a "
                        "path, several joined by + side by side; NAME:int8 for the int8 export of a BERT or MPNet "
                        "encoder", COMPARED_ENCODERS)
LABELS_OUT = Option("out", Path, "result JSON path; the PNG is written beside it", None, env_name="BENCH_OUT")
CSV = Option("csv", Path, "labeled CSV to stream, comma, tab, semicolon or bar separated as its header says "
             "(default: bundled Banking77 train)", None, optional=True)
TEXT_COL = Option("text_col", str, "text column", "text")
LABEL_COL = Option("label_col", str, "label column", "category")
CLASS_SKEW = Option("class_skew", float, "stream a class-imbalanced subsample: the classes, in a seeded order, keep "
                    "shares of their rows falling linearly from all to 1/R (1: every row)", 1.0, low=1.0,
                    metavar="R")
TEST_CSV = Option("test_csv", Path, "labeled CSV for model test accuracy (default with no --csv: Banking77 test)",
                  None, optional=True)
BENCH_BUS = Option("bus", str, "kafka://HOST:PORT, or sqlite for the embedded log (each run gets a fresh one in a "
                   "temp dir)", None, optional=True)
BENCH_ITEMS = Option("items", int, "items per run (the first of a seeded shuffle of Banking77 train)", 2000,
                     env_name="BENCH_ITEMS", low=1)
BENCH_REPEATS = Option("repeats", int, "pipeline and model-only runs each, alternating (medians)", 3,
                       env_name="BENCH_REPEATS", low=1)
BENCH_HEAD_LABELS = Option("head_labels", int, "Banking77 test rows the head is trained on before the runs", 400,
                           env_name="BENCH_HEAD_LABELS", low=10)
BENCH_PROFILE_DIR = Option("profile_dir", Path, "write cProfile stats of every pipeline thread here (slows the "
                           "pipeline runs)", None, env_name="BENCH_PROFILE_DIR", optional=True)
SELECT_POOL = Option("pool", Path, "the pool: .npy embeddings, or .csv / .tsv / .jsonl / .parquet rows (an embedding "
                     "column, or texts through the encoder; rows with a label are labeled already)", None)
SELECT_N = Option("n", int, "rows to pick", None, low=1)
SELECT_STRATEGY = Option("strategy", str, f"selection strategy: {', '.join(STRATEGIES)} (uncertainty, cluster_margin "
                         "and badge need labeled rows of two classes or more)", "kcenter", choices=STRATEGIES)
SELECT_ID_COL = Option("id_col", str, "id column (absent: the row number)", "id")
SELECT_LABEL_COL = Option("label_col", str, "label column: a non-empty value marks a row labeled already", "label")
SELECT_EMBEDDING_COL = Option("embedding_col", str, "embedding column (a list of floats; JSON text in a CSV)",
                              "embedding")
SELECT_SEED = Option("seed", int, "seed of the strategy's random choices", 0, env_name="SELECT_SEED", low=0)
SELECT_OUT = Option("out", Path, "write the picks here (.csv, else JSON lines) instead of standard output", None,
                    env_name="SELECT_OUT", optional=True)
SELECTOR_SIZES = Option("sizes", tuple, "backlog sizes to measure, comma-separated", ("10000", "100000", "1000000"))
SELECTOR_ARRIVALS = Option("arrivals", int, "items.scored messages per step", 500, low=1)
SELECTOR_STEPS = Option("steps", int, "steps measured per backlog size (the median is reported)", 20, low=1)
SELECTOR_STRATEGY = Option("strategy", str, f"the project's strategy: {', '.join(STRATEGIES)}", "cluster_margin",
                           choices=STRATEGIES)
SELECTOR_GUARD = Option("guard", int, "items people have labeled before the steps (every pick is checked against "
                        "them as near-duplicates), in every size's store", 10_000, low=0)
SELECTOR_BANK = Option("bank", int, "labeled vectors of the version's neighbours' vote (0: the head alone)", 0, low=0)
SELECTOR_CARRIED = Option("carried", bool, "items.scored carries the prelabel worker's scores, as served (false: "
                          "the selector scores every arrival itself, as when the worker runs another version)", True)
POOL_SIZES = Option("sizes", tuple, "pool sizes, comma-separated", ("20000", "100000"))
POOL_BUDGET = Option("budget", int, "rows each run picks", 1000, low=1)
GPU_SIZE = Option("size", int, "pool size of the selection section (k-center and k-means)", 1_000_000, low=100,
                  env_name="GPU_SIZE")
GPU_TEXTS = Option("texts", int, "texts each GPU encoder engine encodes (the CPU baseline: at most 2,000)", 20_000,
                   low=8, env_name="GPU_TEXTS")
GPU_PIPELINE = Option("pipeline_items", int, "items streamed through the embedded loop with the encoder on CUDA",
                      4000, low=1, env_name="GPU_PIPELINE_ITEMS")
GPU_ENCODER = Option("encoder", str, "encoder: minilm, bge-small, mpnet, or a BERT or MPNet folder (bench/gpu.sh "
                     "carries an fp16 copy of MiniLM)", "minilm", env_name="GPU_ENCODER")
PROJECT_OPTIONS = (STRATEGY, BUDGET, PRECISION)
FUZZ_REQUESTS = Option("requests", int, "malformed and absurd requests to send", 10_000, env_name="FUZZ_REQUESTS",
                       low=1)
FUZZ_SEED = Option("seed", int, "seed of the requests", 0, env_name="FUZZ_SEED", low=0)
FUZZ_MAX_SECONDS = Option("max_seconds", float, "stop sending after this many seconds", 1800.0,
                          env_name="FUZZ_MAX_SECONDS", low=1.0)
FUZZ_OUT = Option("out", Path, "result JSON path", None, env_name="BENCH_OUT")
STORAGE_ITEMS = Option("items", int, "records per timed call", 10_000, env_name="STORAGE_ITEMS", low=1,
                       high=1_000_000)
STORAGE_REPEATS = Option("repeats", int, "fresh bus and store files per call kind (medians)", 3,
                         env_name="STORAGE_REPEATS", low=1, high=100)
LABELING_ANNOTATORS = Option("annotators", tuple, "concurrent annotators per run, comma-separated", ("1", "20", "50"),
                             env_name="LABELING_ANNOTATORS")
LABELING_PRIORS = Option("prior", tuple, "annotations already in the project per run, comma-separated",
                         ("1000", "100000"), env_name="LABELING_PRIOR")
PREF_JSONL = Option("jsonl", Path, "preference pairs, JSONL (.gz): prompt/chosen/rejected, or HH-RLHF dialogues "
                    "(default: the shipped HH-RLHF harmlessness test split)", None, env_name="PREF_JSONL",
                    optional=True, metavar="FILE")
PREF_SEEDS = Option("seeds", int, "seeds (splits and draws) per arm", 5, env_name="PREF_SEEDS", low=1, high=100)
PREF_NOISE = Option("noise", float, "share of the simulated annotator's answers flipped", 0.0, env_name="PREF_NOISE",
                    low=0.0, high=0.5, high_open=True)
PREF_SERVED = Option("served_seeds", int, "seeds of the served-path runs (a preference project streamed through the "
                     "loop: active, random and EPIG-scored, on the real answers and on planted ones; 0 skips them)",
                     5, env_name="PREF_SERVED_SEEDS", low=0, high=100)
PREF_EVALUATION = Option("served_evaluation", int, "per 100 comparisons of the served evaluation arm's rate moved to "
                         "model evaluation's own budget (0 skips the arm)", 10, env_name="PREF_SERVED_EVALUATION",
                         low=0, high=100)
PREF_BUDGET = Option("budget", int, "random selection's full budget of comparisons", 800, env_name="PREF_BUDGET",
                     low=2)
PREF_PLANTED = Option("planted_scale", float, "the planted control's reward: this many times the all-pairs fit "
                      "(higher: less noisy planted answers)", 3.0, env_name="PREF_PLANTED_SCALE", low=0.0, low_open=True,
                      high=1000.0)
PREF_ACQUISITION = Option("acquisition", str, "active arm's score across prompts: epig (what an answer tells about the "
                          "outcomes to predict) or bald (the reward's epistemic uncertainty)", "epig",
                          env_name="PREF_ACQUISITION", choices=("epig", "bald"))
PREF_SWEEP = Option("sweep_seeds", int, "seeds of each point of the planted sweep (the planted control at 3, 10, 30 "
                    "and 100 times the all-pairs fit; 0 skips it)", 20, env_name="PREF_SWEEP_SEEDS", low=0, high=200)
LABELING_SECONDS = Option("seconds", float, "seconds each run's annotators answer", 10.0, env_name="LABELING_SECONDS",
                          low=0.0, low_open=True, high=3600.0)
CHAOS_BUS = Option("bus", str, "sqlite: `serve all` on the embedded bus and store; kafka: the six services on a "
                   "Kafka broker and PostgreSQL started with the deploy scripts", "sqlite", env_name="CHAOS_BUS",
                   choices=("sqlite", "kafka"))
CHAOS_ITEMS = Option("items", int, "items streamed: a seeded shuffle of the Banking77 train rows of its first 25 "
                     "classes", 3000, env_name="CHAOS_ITEMS", low=1, high=3155)
CHAOS_KILLS = Option("kills", int, "SIGKILLs of a random process at random moments", 20, env_name="CHAOS_KILLS", low=0)
CHAOS_SEED = Option("seed", int, "seed of the items, the kill moments and the victims", 0, env_name="CHAOS_SEED",
                    low=0)


STORE = next(o for o in options(ServeConfig) if o.key == "store")  # `serve --store`, WINNOW_STORE
ROLE = Option("role", str, "admin (global: creates projects), owner, producer, annotator, reviewer or viewer", None,
              env_name="TOKEN_ROLE",
              choices=ROLES)
TOKEN_PROJECT = Option("project", str, "the project the token belongs to (every role but admin)", None,
                       env_name="TOKEN_PROJECT", optional=True)
TOKEN_NAME = Option("name", str, "the identity the holder acts as (an annotator's labels carry it); default "
                    "ROLE-ID", None, env_name="TOKEN_NAME", optional=True)
BUS = next(o for o in options(ServeConfig) if o.key == "bus")  # `serve --bus`, WINNOW_BUS
ERASE_PROJECT = Option("project", str, "the project of the items", None, env_name="ERASE_PROJECT")
EXPORT_FORMAT = Option("format", str, "jsonl, csv, labelstudio, or dpo (preference projects: prompt, chosen, "
                       "rejected and provenance per comparison, for reward-model and DPO trainers)", "jsonl",
                       env_name="EXPORT_FORMAT", choices=("jsonl", "csv", "labelstudio", "dpo"))
EXPORT_OUT = Option("out", Path, "file to write (default: standard output)", None, env_name="EXPORT_OUT",
                    optional=True)
TARGET = Option("target", str, "HOST:PORT of the server's gRPC API", "127.0.0.1:50051", env_name="TARGET")
TOKEN = Option("token", str, "the bearer token (prefer the variable: a flag shows in process lists)", None,
               env_name="TOKEN", optional=True)
TLS_CA = Option("tls_ca", Path, "PEM CA of the server's certificate: speak TLS", None, env_name="TLS_CA",
                optional=True)
CLIENT_OPTIONS = (TARGET, TOKEN, TLS_CA)
CLASSES_OPT = Option("classes", tuple, "the label schema, comma-separated (none for a preference project: A, B, tie)",
                     None, env_name="PROJECT_CLASSES")
KIND = Option("kind", str, "classification (texts, one class each) or preference (a prompt and candidate "
              "responses; people compare two at a time)", "classification", env_name="PROJECT_KIND",
              choices=("classification", "preference"))
GUIDELINE = Option("guideline_version", str, "version of the labeling guideline, carried by every label", "v1",
                   env_name="GUIDELINE_VERSION")
ID_COL = Option("id_col", str, "item id column (default: FILE's stem and the row number)", None,
                env_name="ID_COL", optional=True)
ID_COL_REQUIRED = Option("id_col", str, "item id column", "item_id", env_name="ID_COL")
NEW_BUDGET = Option("budget", str, "new human label budget, LABELS/ITEMS", None, env_name="NEW_BUDGET", optional=True,
                    metavar="LABELS/ITEMS")
NEW_PRECISION = Option("precision", float, "new precision target", None, env_name="NEW_PRECISION", low=0.0,
                       high=1.0, low_open=True, high_open=True, optional=True)
NEW_STRATEGY = Option("strategy", str, "new selection strategy", None, env_name="NEW_STRATEGY", choices=STRATEGIES,
                      optional=True)
NEW_OVERLAP = Option("overlap", int, "new most people asked per item", None, env_name="NEW_OVERLAP", low=1,
                     high=100, optional=True)
NEW_GUIDELINE = Option("guideline_version", str, "new guideline version (every later label carries it)", None,
                       env_name="NEW_GUIDELINE_VERSION", optional=True)
ADD_CLASSES = Option("add_classes", tuple, "classes to add to the schema, comma-separated (appended; existing "
                     "classes never change)", None, env_name="ADD_CLASSES", optional=True)
EXPORT_TARGET = Option("target", str, "HOST:PORT of a server to export from (its ExportRows; the token in "
                       "WINNOW_TOKEN); unset: the store", None, env_name="TARGET", optional=True)
GUIDELINE_FILE = Option("guideline_file", Path, "a text or Markdown file: the guideline people read on the labeling "
                        "page (at most 64 KiB)", None, env_name="GUIDELINE_FILE", optional=True, metavar="FILE")
AUDIT_PROJECT = Option("project", str, "the project whose chain to read (default: the global chain; verify: all)",
                       None, env_name="AUDIT_PROJECT", optional=True)
EXPIRES_IN_S = Option("expires_in_s", float, "seconds until the token expires (default: until revoked)", None,
                      env_name="TOKEN_EXPIRES_IN_S", low=0.0, low_open=True, optional=True)


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, ``winnow: error: ...``, and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"winnow: error: {message.removeprefix('argument ')}\n")


def add_options(parser: argparse.ArgumentParser, opts: Sequence[Option]) -> None:
    """One ``--flag VALUE`` per option, kept as text (the option types and checks it after parsing)."""
    for option in opts:
        metavar = option.metavar or ("{" + ",".join(option.choices) + "}" if option.choices
                                     else "A,B" if option.kind is tuple else option.kind.__name__.upper())
        parser.add_argument(option.flag, dest=option.key, default=None, metavar=metavar,
                            help=option.describe().replace("%", "%%"))


def given(args: argparse.Namespace, option: Option) -> Any:
    """The value of a command-specific option: flag, else ``WINNOW_*`` variable, else default."""
    value = value_of(option, vars(args), os.environ)
    if value is None and not option.optional:
        raise InvalidInput(option.flag, f"is required (or set {option.env})")
    return value


def budget(args: argparse.Namespace) -> tuple[int, int]:
    """``--budget 25/100`` -> 25 labels per 100 items."""
    text = given(args, BUDGET)
    try:
        labels, per = (int(x) for x in text.split("/"))
    except ValueError:
        raise InvalidInput(BUDGET.flag, f"must look like LABELS/ITEMS, e.g. 25/100, got {text!r}") from None
    if not 0 <= labels <= per or per < 1:
        raise InvalidInput(BUDGET.flag, f"needs 0 <= LABELS <= ITEMS and ITEMS >= 1, got {text!r}")
    return labels, per


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="winnow", description="Active-learning labeling orchestration.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stage's decisions (serve: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    loop_options = options(LoopConfig) + options(RuntimeConfig)

    demo = sub.add_parser("demo", help="stream Banking77 through the loop with simulated annotators")
    add_options(demo, (*PROJECT_OPTIONS, DEMO_ITEMS, DEMO_NOISE, DEMO_OVERLAP, GOLD, OUT_DIR, *loop_options))

    bench = sub.add_parser("bench", help="benchmarks (JSON + PNG results)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    labels = bench_sub.add_parser("labels", help="label economics on a CSV, against random selection")
    add_options(labels, (*PROJECT_OPTIONS, CSV, TEXT_COL, LABEL_COL, TEST_CSV, CLASS_SKEW, SEEDS, BENCH_NOISE, OVERLAP,
                         BENCH_GOLD, LABELS_OUT, *loop_options))
    throughput = bench_sub.add_parser("throughput", help="items/s through the whole pipeline against the model alone")
    add_options(throughput, (BENCH_BUS, BENCH_ITEMS, BENCH_REPEATS, BENCH_HEAD_LABELS, BENCH_PROFILE_DIR, LABELS_OUT,
                             *loop_options))
    fuzz = bench_sub.add_parser("fuzz", help="malformed and absurd requests against `serve all` on 127.0.0.1 "
                                "(exit 1 unless: no INTERNAL or UNKNOWN, no restart, healthy, store consistent, "
                                "no answer but a refusal to a call without a valid credential)")
    add_options(fuzz, (FUZZ_REQUESTS, FUZZ_SEED, FUZZ_MAX_SECONDS, FUZZ_OUT))
    chaos = bench_sub.add_parser("chaos", help="stream items while SIGKILLing the processes, then count lost and "
                                 "duplicated labels (exit 1 unless: 0 lost, 0 duplicated, every label on the topic)")
    add_options(chaos, (CHAOS_BUS, CHAOS_ITEMS, CHAOS_KILLS, CHAOS_SEED, FUZZ_OUT))
    labeling = bench_sub.add_parser("labeling", help="concurrent annotators on the labeling API at two history "
                                    "lengths: lease and submit latency, answers/s, errors, double leases")
    add_options(labeling, (LABELING_ANNOTATORS, LABELING_PRIORS, LABELING_SECONDS, FUZZ_OUT))
    preferences = bench_sub.add_parser("preferences", help="preference comparisons: active pair selection against "
                                       "random, reward model accuracy per comparison, over seeds")
    add_options(preferences, (PREF_JSONL, PREF_SEEDS, PREF_NOISE, PREF_BUDGET, PREF_PLANTED, PREF_SWEEP,
                              PREF_ACQUISITION, PREF_SERVED, PREF_EVALUATION, FUZZ_OUT, *options(RuntimeConfig)))
    encoders = bench_sub.add_parser("encoders", help="sentence encoders side by side: sentences/s, int8 cosine to "
                                    "fp32, test accuracy and the label benchmark's pool reference")
    add_options(encoders, (BENCH_ENCODERS, CSV, TEXT_COL, LABEL_COL, TEST_CSV, SEEDS, LABELS_OUT))
    selector = bench_sub.add_parser("selector", help="one selector's step against its backlog (10,000 to 1,000,000 "
                                    "waiting): step_s and arrivals_per_s per size")
    add_options(selector, (SELECTOR_SIZES, SELECTOR_ARRIVALS, SELECTOR_STEPS, SELECTOR_STRATEGY, SELECTOR_GUARD,
                           SELECTOR_BANK, SELECTOR_CARRIED, FUZZ_OUT))
    select_bench = bench_sub.add_parser("select", help="pool selection: Winnow's strategies against scikit-activeml "
                                        "(when installed): seconds, peak memory and coverage per pool size")
    add_options(select_bench, (POOL_SIZES, POOL_BUDGET, FUZZ_OUT))
    gpu = bench_sub.add_parser("gpu", help="the GPU run: encoder engines, k-center and k-means at 1,000,000 and the "
                               "pipeline on CUDA, each against this machine's CPU in the same run (bench/gpu.sh)")
    add_options(gpu, (GPU_ENCODER, GPU_SIZE, GPU_TEXTS, GPU_PIPELINE, FUZZ_OUT))
    storage = bench_sub.add_parser("storage", help="records/s of the SQLite bus and store on their hot calls")
    add_options(storage, (STORAGE_ITEMS, STORAGE_REPEATS, FUZZ_OUT))

    select = sub.add_parser("select", help="pick the rows of a dataset at rest people should label next (JSON lines "
                            "rank, row, id)")
    add_options(select, (SELECT_POOL, SELECT_N, SELECT_STRATEGY, TEXT_COL, SELECT_ID_COL, SELECT_LABEL_COL,
                         SELECT_EMBEDDING_COL, SELECT_SEED, SELECT_OUT, *options(RuntimeConfig)))

    serve = sub.add_parser("serve", help="run one service (or all) until SIGTERM")
    serve.add_argument("service", choices=(*SERVICES, "all"))
    serve.add_argument("--insecure", action="store_true",
                       help="serve the API without credentials: every caller may do everything (tests, a machine "
                       "no one else reaches); without it, calls need a token (`winnow token create`)")
    add_options(serve, options(Settings))

    token = sub.add_parser("token", help="create, list and revoke API tokens, on the store directly")
    token_sub = token.add_subparsers(dest="token", required=True)
    create = token_sub.add_parser("create", help="a new token, printed alone on the last line (shown once)")
    add_options(create, (STORE, ROLE, TOKEN_PROJECT, TOKEN_NAME, EXPIRES_IN_S))
    listing = token_sub.add_parser("list", help="tokens (never the tokens themselves): id, role, project, name, state")
    add_options(listing, (STORE, TOKEN_PROJECT))
    revoke = token_sub.add_parser("revoke", help="revoke a token at once (by its id, the part after wn_)")
    revoke.add_argument("token_id")
    add_options(revoke, (STORE,))

    erase = sub.add_parser("erase", help="erase items for good, on the store and the bus directly (the running "
                           "workers drop them from their caches and memory within seconds)")
    erase.add_argument("item_ids", nargs="+", metavar="ITEM_ID")
    add_options(erase, (STORE, BUS, ERASE_PROJECT))

    export = sub.add_parser("export", help="a project's final labels with text, provenance and answers, as JSONL, "
                            "CSV or Label Studio JSON: from a server with --target (a viewer's token), else from "
                            "the store directly (audited)")
    add_options(export, (STORE, ERASE_PROJECT, EXPORT_FORMAT, EXPORT_OUT, EXPORT_TARGET, TOKEN, TLS_CA))
    importer = sub.add_parser("import", help="a Label Studio JSON export into a project: items, answers, gold, "
                              "final labels (on the store and bus directly; checked whole before anything is written)")
    importer.add_argument("file", type=Path, metavar="FILE")
    importer.add_argument("--as-gold", action="store_true", help="every answered item's answer is a known answer")
    add_options(importer, (STORE, BUS, ERASE_PROJECT))

    project = sub.add_parser("project", help="create, list and show projects on a running server (--target, token "
                             "in WINNOW_TOKEN)")
    project_sub = project.add_subparsers(dest="project_command", required=True)
    create_p = project_sub.add_parser("create", help="create a project (the admin); the same settings again change "
                                      "nothing")
    create_p.add_argument("name")
    add_options(create_p, (*CLIENT_OPTIONS, CLASSES_OPT, KIND, BUDGET, PRECISION, STRATEGY, OVERLAP, GUIDELINE,
                           GUIDELINE_FILE))
    add_options(project_sub.add_parser("list", help="the projects the token belongs to"), CLIENT_OPTIONS)
    update = project_sub.add_parser("update", help="change a project's settings (owners): only those given change; "
                                    "audited; the workers take them within seconds")
    update.add_argument("name")
    add_options(update, (*CLIENT_OPTIONS, NEW_BUDGET, NEW_PRECISION, NEW_STRATEGY, NEW_OVERLAP, NEW_GUIDELINE,
                         GUIDELINE_FILE, ADD_CLASSES))
    show = project_sub.add_parser("show", help="a project's settings and stats, as JSON")
    show.add_argument("name")
    add_options(show, CLIENT_OPTIONS)
    ingest_p = sub.add_parser("ingest", help="stream a CSV or JSONL file (or either gzipped) of items into a "
                              "project, with a progress bar (every row checked before any is sent)")
    ingest_p.add_argument("file", type=Path, metavar="FILE")
    add_options(ingest_p, (*CLIENT_OPTIONS, ERASE_PROJECT, TEXT_COL, ID_COL))
    gold_p = sub.add_parser("gold", help="upload known answers (a CSV or JSONL file of item ids and labels)")
    gold_p.add_argument("file", type=Path, metavar="FILE")
    add_options(gold_p, (*CLIENT_OPTIONS, ERASE_PROJECT, ID_COL_REQUIRED, LABEL_COL))
    add_options(sub.add_parser("quality", help="each annotator's answers, accuracy on gold and estimated accuracy"),
                (*CLIENT_OPTIONS, ERASE_PROJECT))

    audit = sub.add_parser("audit", help="read and verify the hash-chained audit trail, on the store directly")
    audit_sub = audit.add_subparsers(dest="audit", required=True)
    show = audit_sub.add_parser("show", help="a project's audit records, one per line (the global chain without "
                                "--project)")
    add_options(show, (STORE, AUDIT_PROJECT))
    check = audit_sub.add_parser("verify", help="check every chain (or one project's): exit 1 naming the first "
                                 "record that does not hold; prints each chain's head hash")
    add_options(check, (STORE, AUDIT_PROJECT))
    return parser


def settings_for(args: argparse.Namespace, serve: bool = False) -> Settings:
    """The :class:`Settings` of this invocation (the serve group only for ``serve``: a demo ignores its variables)."""
    flags = vars(args)
    return Settings(loop=resolve(LoopConfig, flags), runtime=resolve(RuntimeConfig, flags),
                    serve=resolve(ServeConfig, flags) if serve else ServeConfig())


def make_runtime_from(settings: Settings, embedding_cache: bool = True):
    """The inference runtime the settings name (torch's threads set first, once for the process)."""
    from winnow.core.ml.runtime import make_runtime, set_torch_threads

    runtime = settings.runtime
    set_torch_threads(runtime.engine, runtime.torch_threads)
    return make_runtime(runtime.engine, runtime.device, cache_dir=runtime.cache_dir, embedding_cache=embedding_cache,
                        encoder=runtime.encoder, int8=runtime.encoder_int8)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_for(args, serve=True)  # refused before anything starts
    from winnow.services.serve import ShutdownOverran, parse_services, serve

    try:
        serve(settings, parse_services(args.service), insecure=args.insecure)
    except ShutdownOverran as e:  # something is stuck: end the process now, whatever thread holds it
        print(f"winnow: error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    return 0


def _token_store(args: argparse.Namespace):
    from winnow.services.serve import open_store

    return open_store(given(args, STORE))


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_token_create(args: argparse.Namespace) -> int:
    import time

    from winnow.core.access.tokens import issue

    role, project, name, expires = (given(args, ROLE), given(args, TOKEN_PROJECT), given(args, TOKEN_NAME),
                                    given(args, EXPIRES_IN_S))
    store = _token_store(args)
    try:
        token, info = issue(store, _actor(), role, project, name, time.time(), expires)
    finally:
        store.close()
    print(f"created token {info.token_id}: role {info.role}, project {info.project or '(all: admin)'}, "
          f"name {info.name}; shown only now, send it as 'authorization: Bearer TOKEN'")
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    import time

    store = _token_store(args)
    try:
        tokens = store.tokens(given(args, TOKEN_PROJECT))
    finally:
        store.close()
    now = time.time()
    print(f"{'token_id':<12}  {'role':<9}  {'project':<24}  {'name':<24}  state")
    for t in tokens:
        state = ("revoked" if t.revoked_at is not None else "expired" if not t.live(now)
                 else "live" if t.expires_at is None else f"live, expires in {t.expires_at - now:.0f} s")
        print(f"{t.token_id:<12}  {t.role:<9}  {t.project or '-':<24}  {t.name:<24}  {state}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    import time

    from winnow.core.access.tokens import revoke

    store = _token_store(args)
    try:
        info = revoke(store, _actor(), args.token_id, time.time())
    finally:
        store.close()
    print(f"revoked token {info.token_id} ({info.role} {info.name})")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    import time

    from winnow.core.loop.erase import erase
    from winnow.services.serve import open_bus

    project = given(args, ERASE_PROJECT)
    store = _token_store(args)
    try:
        bus = open_bus(given(args, BUS))
        try:
            erasure = erase(bus, store, project, args.item_ids, _actor(), time.time())
        finally:
            bus.close()
    finally:
        store.close()
    print(f"erased {len(erasure.erased)} items ({len(erasure.already)} erased before)")
    if erasure.model_versions:
        print("model versions that may have learned from them (later versions do not): "
              + ", ".join(erasure.model_versions))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json
    import time

    from winnow.core.data.formats import to_dpo, to_label_studio, write_csv, write_jsonl
    from winnow.core.loop.transfer import export_rows

    project, fmt, out = given(args, ERASE_PROJECT), given(args, EXPORT_FORMAT), given(args, EXPORT_OUT)
    if given(args, EXPORT_TARGET) is not None:
        from winnow.services.client import WinnowClient

        with WinnowClient(given(args, EXPORT_TARGET), given(args, TOKEN), tls_ca=given(args, TLS_CA)) as client:
            data = client.export_rows(project)
    else:
        store = _token_store(args)
        try:
            data = export_rows(store, project, _actor(), time.time())
        finally:
            store.close()
    if fmt == "dpo":
        comparisons = len(data)
        data = to_dpo(data)
        print(f"{comparisons - len(data)} of {comparisons} labels left out (ties, or not comparisons)", file=sys.stderr)
    text = (write_jsonl(data) if fmt in ("jsonl", "dpo") else write_csv(data) if fmt == "csv"
            else json.dumps(to_label_studio(data), ensure_ascii=False, indent=1))
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {len(data)} labels to {out}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import time

    from winnow.core.data.files import read_text
    from winnow.core.data.formats import from_label_studio
    from winnow.core.loop.transfer import import_tasks
    from winnow.services.serve import open_bus

    project_name = given(args, ERASE_PROJECT)
    text = read_text(args.file)
    store = _token_store(args)
    try:
        project = store.get_project(project_name)
        imported = from_label_studio(text, project.name, project.classes, time.time())
        bus = open_bus(given(args, BUS))
        try:
            with bus.producer() as producer:
                counts = import_tasks(producer, store, project, imported, _actor(), time.time(), args.as_gold)
        finally:
            bus.close()
    finally:
        store.close()
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _guideline(args: argparse.Namespace) -> str | None:
    path = given(args, GUIDELINE_FILE)
    if path is None:
        return None
    from winnow.core.data.files import read_text

    return read_text(path, GUIDELINE_FILE.flag)


def _client(args: argparse.Namespace):
    from winnow.services.client import WinnowClient

    ca = given(args, TLS_CA)
    return WinnowClient(given(args, TARGET), given(args, TOKEN), tls_ca=ca)


def cmd_project(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    with _client(args) as client:
        if args.project_command == "create":
            labels, per = budget(args)
            made = client.create_project(args.name, given(args, CLASSES_OPT) or (), budget_labels=labels,
                                         budget_per_items=per, precision_target=given(args, PRECISION),
                                         strategy=given(args, STRATEGY), overlap=given(args, OVERLAP),
                                         guideline_version=given(args, GUIDELINE), guideline=_guideline(args),
                                         kind=given(args, KIND))
            print(f"project {made.name}: {made.kind}, {len(made.classes)} classes, budget {made.budget_labels}/"
                  f"{made.budget_per_items}, precision target {made.precision_target}")
        elif args.project_command == "update":
            changes: dict[str, object] = {}
            if given(args, NEW_BUDGET) is not None:
                args.budget = given(args, NEW_BUDGET)
                changes["budget_labels"], changes["budget_per_items"] = budget(args)
            for option, key in ((NEW_PRECISION, "precision_target"), (NEW_STRATEGY, "strategy"),
                                (NEW_OVERLAP, "overlap"), (NEW_GUIDELINE, "guideline_version")):
                if (value := given(args, option)) is not None:
                    changes[key] = value
            if (text := _guideline(args)) is not None:
                changes["guideline"] = text
            if added := given(args, ADD_CLASSES):
                changes["add_classes"] = added
            if not changes:
                raise InvalidInput("--budget", "nothing to change: give at least one setting")
            made = client.update_project(args.name, **changes)
            print(f"project {made.name}: budget {made.budget_labels}/{made.budget_per_items}, precision target "
                  f"{made.precision_target}, strategy {made.strategy}, overlap {made.overlap}, guideline "
                  f"{made.guideline_version}, {len(made.classes)} classes")
        elif args.project_command == "list":
            for p in client.projects():
                print(f"{p.name:<30} {len(p.classes):>5} classes  budget {p.budget_labels}/{p.budget_per_items}  "
                      f"guideline {p.guideline_version}")
        else:
            stats = client.stats(args.name)
            print(json.dumps({"project": dataclasses.asdict(client.project(args.name)),
                              "stats": dataclasses.asdict(stats)}, indent=1, default=str))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from winnow.services.ops import ingest_file, items_from

    items = items_from(args.file, given(args, ERASE_PROJECT), given(args, TEXT_COL), given(args, ID_COL))
    with _client(args) as client, Progress(transient=True) as bar:
        task = bar.add_task(f"ingest {args.file.name}", total=len(items))
        new = ingest_file(client, items, progress=lambda done: bar.update(task, completed=done))
    print(f"sent {len(items)} items, {new} new")
    return 0


def cmd_gold(args: argparse.Namespace) -> int:
    from winnow.services.ops import read_rows

    id_col, label_col = given(args, ID_COL_REQUIRED), given(args, LABEL_COL)
    rows = read_rows(args.file, (id_col, label_col))
    with _client(args) as client:
        gold = client.set_gold(given(args, ERASE_PROJECT), {row[id_col]: row[label_col] for row in rows})
    print(f"{len(rows)} answers recorded; the project has {gold} gold items")
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    with _client(args) as client:
        quality = client.annotator_quality(given(args, ERASE_PROJECT))
    print(f"{'annotator':<24} {'answers':>8} {'gold accuracy':>14} {'estimated':>10}")
    for name, q in sorted(quality.items()):
        show = ["-" if q[k] is None else f"{q[k]:.3f}" for k in ("gold_accuracy", "estimated_accuracy")]
        print(f"{name:<24} {q['answers']:>8} {show[0]:>14} {show[1]:>10}")
    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    store = _token_store(args)
    try:
        records = store.audit_trail(given(args, AUDIT_PROJECT))
    finally:
        store.close()
    import datetime

    for r in records:
        when = datetime.datetime.fromtimestamp(r.time, datetime.timezone.utc).isoformat(timespec="seconds")
        objects = ",".join(r.objects[:5]) + (f",... ({len(r.objects)})" if len(r.objects) > 5 else "")
        print(f"{r.n:>6}  {when}  {r.actor:<20}  {r.action:<15}  [{objects}]  {r.detail}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from winnow.core.domain.audit import verify

    project = given(args, AUDIT_PROJECT)
    store = _token_store(args)
    try:
        chains = [project] if project is not None else store.audit_chains()
        records = [r for chain in chains for r in store.audit_trail(chain or None)]
    finally:
        store.close()
    broken, heads = verify(records)
    for chain, head in sorted(heads.items()):
        print(f"intact  {chain or '(global)'}  head {head}")
    for problem in broken:
        print(f"BROKEN  {problem}")
    return 1 if broken else 0


def _datasets(args: argparse.Namespace):
    from winnow.core.data.datasets import banking77, load_csv

    csv, test_csv = given(args, CSV), given(args, TEST_CSV)
    if csv is None:
        return banking77()
    text_col, label_col = given(args, TEXT_COL), given(args, LABEL_COL)
    train = load_csv(csv, text_col, label_col)
    test = load_csv(test_csv, text_col, label_col, classes=train.classes) if test_csv else None
    return train, test


def cmd_bench_labels(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from winnow.bench.labels import run_labels_benchmark
    from winnow.core.data.datasets import class_skewed
    from winnow.core.domain.records import Project

    settings = settings_for(args)
    out = given(args, LABELS_OUT)
    labels, per = budget(args)
    precision, strategy = given(args, PRECISION), given(args, STRATEGY)
    seeds, overlap, gold = given(args, SEEDS), given(args, OVERLAP), given(args, BENCH_GOLD)
    noise = tuple(NOISE_RATE.parse(text, BENCH_NOISE.flag) for text in given(args, BENCH_NOISE))
    train, test = _datasets(args)  # validated before anything runs or is written
    train = class_skewed(train, given(args, CLASS_SKEW), settings.loop.seed)
    project = Project("bench", train.classes, labels, per, precision, strategy, overlap)
    runtime = make_runtime_from(settings)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"{name:>7} items", total=total)
            bar.update(tasks[name], completed=done)

        result = run_labels_benchmark(train, test, runtime, out, project, settings.loop, seed=settings.loop.seed,
                                      seeds=seeds, noise=noise, gold=gold, progress=progress)
    _print_table(console, result)
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from winnow.bench.throughput import bus_kind, run_throughput_benchmark
    from winnow.core.data.datasets import banking77

    settings = settings_for(args)  # every value checked before the model loads
    out, bus_url = given(args, LABELS_OUT), given(args, BENCH_BUS)
    items, repeats, head_labels = given(args, BENCH_ITEMS), given(args, BENCH_REPEATS), given(args, BENCH_HEAD_LABELS)
    profile_dir = given(args, BENCH_PROFILE_DIR)
    bus_kind(bus_url)
    train, test = banking77()
    runtime = make_runtime_from(settings, embedding_cache=False)  # the repeats encode the same texts
    console = Console(stderr=True)
    result = run_throughput_benchmark(
        train, test, runtime, out, items=items, bus_url=bus_url, repeats=repeats, seed=settings.loop.seed,
        head_labels=head_labels, config=settings.loop, profile_dir=profile_dir, progress=console.print)
    table = Table(title=f"throughput, {result['items']} items, {result['bus']} bus")
    table.add_column("")
    table.add_column("items/s (median)", justify="right")
    table.add_row("whole pipeline", f"{result['pipeline_items_per_s']:.1f}")
    table.add_row("model only", f"{result['model_only_items_per_s']:.1f}")
    table.add_row("ratio", f"{result['ratio']:.3f}")
    console.print(table)
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def cmd_bench_fuzz(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.fuzz import run_fuzz

    out, requests = given(args, FUZZ_OUT), given(args, FUZZ_REQUESTS)
    seed, max_seconds = given(args, FUZZ_SEED), given(args, FUZZ_MAX_SECONDS)
    console = Console(stderr=True)
    result = run_fuzz(requests, out, seed=seed, max_seconds=max_seconds, progress=console.print)
    console.print(f"{result['requests']} requests in {result['duration_s']} s: {result['by_code']}")
    console.print(f"server_restarts={result['server_restarts']} healthy_after={result['healthy_after']} "
                  f"store_consistent={result['store_consistent']}")
    console.print(f"wrote {out}")
    passed = (result["internal"] == result["unknown"] == result["server_restarts"] == 0 and result["healthy_after"]
              and result["store_consistent"] and result["unauthenticated_answers"] == 0)
    return 0 if passed else 1


def cmd_bench_chaos(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.chaos import ChaosPlan, run_chaos

    out = given(args, FUZZ_OUT)
    plan = ChaosPlan(items=given(args, CHAOS_ITEMS), kills=given(args, CHAOS_KILLS), seed=given(args, CHAOS_SEED),
                     bus=given(args, CHAOS_BUS))
    console = Console(stderr=True)
    result = run_chaos(plan, out)
    console.print({k: result[k] for k in ("acknowledged", "labeled_once", "topic_labels", "lost", "duplicated",
                                          "kills", "broker_restarts", "duration_s")})
    console.print(f"wrote {out}")
    passed = result["lost"] == result["duplicated"] == 0 and result["topic_labels"] == result["acknowledged"]
    return 0 if passed else 1


def cmd_bench_preferences(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.preferences import PreferencePlan, run_preference_benchmark

    plan = PreferencePlan(seeds=given(args, PREF_SEEDS), budget=given(args, PREF_BUDGET), noise=given(args, PREF_NOISE),
                          served_seeds=given(args, PREF_SERVED), served_evaluation=given(args, PREF_EVALUATION),
                          planted_scale=given(args, PREF_PLANTED), sweep_seeds=given(args, PREF_SWEEP),
                          acquisition=given(args, PREF_ACQUISITION))
    out = given(args, FUZZ_OUT)
    console = Console(stderr=True)
    runtime = make_runtime_from(settings_for(args))  # --encoder picks the features
    result = run_preference_benchmark(out, plan, given(args, PREF_JSONL), runtime=runtime, progress=console.print)
    console.print({k: result[k] for k in ("random_labels", "random_accuracy", "active_accuracy",
                                          "labels_to_match_random", "ceiling_accuracy", "interval_coverage")})
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def cmd_bench_labeling(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.labeling import run_labeling_benchmark

    annotators, priors = _ints(args, LABELING_ANNOTATORS, 0), _ints(args, LABELING_PRIORS, 0)
    out, seconds = given(args, FUZZ_OUT), given(args, LABELING_SECONDS)
    console = Console(stderr=True)
    result = run_labeling_benchmark(out, annotators, priors, seconds, progress=lambda run: console.print(run))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0 if all(r["errors"] == 0 and r["double_leases"] == 0 for r in result["runs"]) else 1


def cmd_select(args: argparse.Namespace) -> int:
    import csv
    import io

    from winnow.core.data.formats import write_jsonl
    from winnow.core.select.pool import read_pool, select_rows

    settings = settings_for(args)
    n, strategy, out = given(args, SELECT_N), given(args, SELECT_STRATEGY), given(args, SELECT_OUT)
    pool = read_pool(given(args, SELECT_POOL), lambda texts: make_runtime_from(settings).encoder.encode(list(texts)),
                     given(args, TEXT_COL), given(args, SELECT_ID_COL), given(args, SELECT_LABEL_COL),
                     given(args, SELECT_EMBEDDING_COL))
    rows = select_rows(pool, n, strategy, given(args, SELECT_SEED), settings.loop.train)
    picks = [{"rank": k, "row": int(r), "id": pool.ids[r]} for k, r in enumerate(rows)]
    text = write_jsonl(picks)
    if out is not None and out.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["rank", "row", "id"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(picks)
        text = buffer.getvalue()
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {len(picks)} picks of {sum(label is None for label in pool.labels)} unlabeled rows to {out}",
              file=sys.stderr)
    return 0


def cmd_bench_encoders(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.encoders import parse_encoder, run_encoder_benchmark
    from winnow.core.domain.settings import LoopConfig

    encoders, seeds, out = given(args, BENCH_ENCODERS), given(args, SEEDS), given(args, LABELS_OUT)
    for text in encoders:
        parse_encoder(text)
    train, test = _datasets(args)
    if test is None:
        raise InvalidInput("test_csv", "the encoder benchmark measures test accuracy: give --test-csv with --csv")
    console = Console(stderr=True)
    result = run_encoder_benchmark(train, test, out, LoopConfig(), encoders, seeds,
                                   progress=lambda name: console.print(f"encoder {name} ..."))
    for run in result["encoders"]:
        cosine = run["cosine_to_fp32"]
        console.print(f"{run['encoder']:<14} {run['sentences_per_s']:>7.0f} sentences/s  test accuracy "
                      f"{run['test_accuracy_all_labels']:.4f}  pool reference "
                      f"{run['pool_reference_final_label_accuracy']:.4f}"
                      + (f"  cosine to fp32 mean {cosine['mean']:.4f} min {cosine['min']:.4f}" if cosine else ""))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _ints(args: argparse.Namespace, option: Option, low: int) -> tuple[int, ...]:
    """A comma-separated option's values as integers of at least ``low`` (InvalidInput naming its flag)."""
    each = Option(option.dest, int, option.help, low=low)
    return tuple(each.parse(text, option.flag) for text in given(args, option))


def cmd_bench_selector(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.selector import run_selector_benchmark

    sizes, out = _ints(args, SELECTOR_SIZES, 1), given(args, FUZZ_OUT)
    console = Console(stderr=True)
    result = run_selector_benchmark(out, sizes, given(args, SELECTOR_ARRIVALS), given(args, SELECTOR_STEPS),
                                    given(args, SELECTOR_STRATEGY), guard=given(args, SELECTOR_GUARD),
                                    bank=given(args, SELECTOR_BANK), carried=given(args, SELECTOR_CARRIED),
                                    progress=console.print)
    console.print(f"step at the largest backlog / at the smallest: {result['step_ratio_largest_to_smallest']:.2f}")
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def cmd_bench_select(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.select import run_select_benchmark

    sizes, out = _ints(args, POOL_SIZES, 100), given(args, FUZZ_OUT)
    console = Console(stderr=True)
    result = run_select_benchmark(out, sizes, given(args, POOL_BUDGET), progress=lambda run: console.print(
        f"{run['n']:>9,} {run['implementation']:>16} {run['method']:>8}: {run['wall_s']:8.2f} s, "
        f"{run['peak_rss_mb']:7.0f} MB, coverage max {run['coverage_max']:.4f} mean {run['coverage_mean']:.4f}"))
    for skipped in result["skipped"][:1]:
        console.print(f"{skipped['implementation']}: {skipped['why']}")
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.gpu import run_gpu_benchmark

    out, console = given(args, FUZZ_OUT), Console(stderr=True)
    result = run_gpu_benchmark(out, given(args, GPU_ENCODER), given(args, GPU_SIZE), texts=given(args, GPU_TEXTS),
                               pipeline_items=given(args, GPU_PIPELINE),
                               progress=lambda name: console.print(f"gpu bench: {name}"))
    for name, engine in result["encoder"].get("engines", {}).items():
        console.print(f"{name:>16}: " + (f"{engine['sentences_per_s']:,.0f} sentences/s" if "sentences_per_s" in engine
                                         else f"skipped ({engine['skipped']})"))
    console.print(f"wrote {out} and {out.with_suffix('.png')} in {result['total_s']:.0f} s")
    return 0


def cmd_bench_storage(args: argparse.Namespace) -> int:
    from rich.console import Console
    from winnow.bench.storage import run_storage_benchmark

    items, repeats = given(args, STORAGE_ITEMS), given(args, STORAGE_REPEATS)
    out = given(args, FUZZ_OUT)
    result = run_storage_benchmark(out, items=items, repeats=repeats)
    console = Console(stderr=True)
    for name, rate in result["per_s"].items():
        console.print(f"{name:<26} {rate:>12,.0f} /s")
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _print_table(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title="label economics")
    table.add_column("")
    table.add_column("winnow", justify="right")
    table.add_column("random", justify="right")
    uncertified = result.get("uncertified_reference")
    if uncertified:
        table.add_column("uncertified", justify="right")
    runs = [result, result["random"]] + ([uncertified] if uncertified else [])
    for key in ("items", "human_labels", "human_fraction", "final_label_accuracy", "worst_final_label_accuracy",
                "auto_accept_precision", "auto_accepted_fraction", "first_certified_at_fraction",
                "certified_accuracy_lower_bound", "bound_held", "check_fraction", "low_confidence_accuracy",
                "human_label_accuracy", "annotations_per_item", "model_test_accuracy", "wall_s"):
        cells = []
        for value in (run.get(key) for run in runs):
            cells.append("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        table.add_row(key, *cells)
    console.print(table)
    reference = result.get("pool_reference")
    if reference:
        console.print("pool reference (whole dataset at once, every label on margin picks, no checks): final "
                      f"labels {reference['final_label_accuracy']:.4f} "
                      f"(worst {reference['worst_final_label_accuracy']:.4f}) "
                      f"at human fraction {reference['human_fraction']:.4f}")
    if uncertified:
        console.print("uncertified reference (the same stream, checks all but off: every model label from the last "
                      "model at close, nothing vouched for): what certifying costs is winnow's distance to it")


def cmd_demo(args: argparse.Namespace) -> int:
    from winnow.services.demo import DemoOptions, run_demo

    noise = tuple(NOISE_RATE.parse(text, DEMO_NOISE.flag) for text in given(args, DEMO_NOISE))
    labels, per = budget(args)
    demo = DemoOptions(items=given(args, DEMO_ITEMS), noise=noise, overlap=given(args, DEMO_OVERLAP),
                       gold=given(args, GOLD), out_dir=given(args, OUT_DIR), strategy=given(args, STRATEGY),
                       budget_labels=labels, budget_per_items=per, precision=given(args, PRECISION))
    return run_demo(demo, settings_for(args))


COMMANDS = {("demo", None): cmd_demo, ("select", None): cmd_select, ("bench", "labels"): cmd_bench_labels,
            ("bench", "encoders"): cmd_bench_encoders, ("bench", "selector"): cmd_bench_selector,
            ("bench", "select"): cmd_bench_select, ("bench", "gpu"): cmd_bench_gpu,
            ("bench", "throughput"): cmd_bench_throughput, ("bench", "fuzz"): cmd_bench_fuzz,
            ("bench", "chaos"): cmd_bench_chaos, ("bench", "storage"): cmd_bench_storage,
            ("bench", "labeling"): cmd_bench_labeling,
            ("bench", "preferences"): cmd_bench_preferences,
            ("serve", None): cmd_serve, ("token", "create"): cmd_token_create,
            ("token", "list"): cmd_token_list, ("token", "revoke"): cmd_token_revoke,
            ("erase", None): cmd_erase, ("export", None): cmd_export, ("import", None): cmd_import,
            ("project", None): cmd_project, ("ingest", None): cmd_ingest, ("gold", None): cmd_gold,
            ("quality", None): cmd_quality,
            ("audit", "show"): cmd_audit_show, ("audit", "verify"): cmd_audit_verify}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a bad value or a refused input is one line on stderr and exit code 2."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed in one line
        return e.code if isinstance(e.code, int) else USAGE_ERROR
    quiet = logging.DEBUG if args.command == "serve" else logging.INFO
    loud = logging.INFO if args.command == "serve" else logging.WARNING
    logging.basicConfig(level=quiet if args.verbose else loud, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it loads, at every start
    if not args.verbose:  # kafka-python logs every connection attempt at INFO and each failed one twice
        logging.getLogger("kafka").setLevel(logging.ERROR)
    sub_command = getattr(args, "bench", None) or getattr(args, "token", None) or getattr(args, "audit", None)
    command = COMMANDS.get((args.command, sub_command))
    try:
        return command(args) if command is not None else USAGE_ERROR
    except WinnowError as e:
        print(f"winnow: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:
        print(f"winnow: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line, and the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        print(f"winnow: error: unexpected {e!r} (run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
