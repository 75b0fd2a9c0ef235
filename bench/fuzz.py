"""`winnow bench fuzz`: malformed and absurd requests against a real `winnow serve all` on 127.0.0.1.

Every RPC of every winnow.v1 service (and health) gets random bytes, invalid UTF-8, mutated valid
encodings, extreme values (huge strings, NUL, NaN and infinities, extreme integers, 100,000 items)
and plausible requests, through raw channel calls that send the bytes as they are, each with a random
caller's credential (the admin, two annotators, none, a forged token). The server must
answer each with a status (never INTERNAL or UNKNOWN), stay the same process, answer health with
SERVING, and leave its store consistent with its bus (checked by ``bench.fuzz_check``).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from winnow.bench.cluster import stop_process
from winnow.bench.common import environment, write_json
from winnow.bench.fuzz_check import check_store
from winnow.services.client import channel as bearer_channel
from winnow.v1 import access_pb2, ingest_pb2, labeling_pb2, models_pb2, projects_pb2, records_pb2

PROJECT = "fuzz"
CLASSES = ("pos", "neg", "mixed")
HOST = "127.0.0.1"  # the fuzz never leaves this machine
CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 180.0
HUGE_ITEM_CALLS = 4  # calls with 100,000 items each (bounded: each costs seconds)

METHODS: list[MethodDescriptor] = [
    method for module, name in ((ingest_pb2, "Ingest"), (labeling_pb2, "Labeling"), (projects_pb2, "Projects"),
                                (models_pb2, "Models"), (access_pb2, "Access"))
    for method in module.DESCRIPTOR.services_by_name[name].methods
] + [health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]]  # Watch never ends


# -- the server under test ------------------------------------------------------------------------
@dataclass
class ServerProcess:
    """`winnow serve all` as a child process; its output is kept (the last lines) by a reader thread."""

    workdir: Path
    process: subprocess.Popen | None = None
    target: str | None = None
    token: str | None = None  # the first admin token `serve` printed on its first start (the store keeps it)
    lines: deque = field(default_factory=lambda: deque(maxlen=200))
    tracebacks: int = 0
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._ready.clear()
        self.target = None
        command = [sys.executable, "-m", "winnow.services.cli", "serve", "all", "--project", PROJECT,
                   "--bus", f"sqlite:///{self.workdir / 'bus.sqlite'}",
                   "--store", f"sqlite:///{self.workdir / 'store.sqlite'}",
                   "--grpc-host", HOST, "--grpc-port", "0", "--models-dir", str(self.workdir / "models")]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"}, errors="replace")
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or self.target is None:
            self.stop()
            raise RuntimeError("serve all did not start:\n" + "\n".join(self.lines))

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            self.lines.append(line[:500])
            self.tracebacks += line.startswith("Traceback")
            if line.startswith("  wn_") and self.token is None:
                self.token = line.strip()
            if line.startswith("grpc listening on"):
                self.target = line.removeprefix("grpc listening on").strip()
                self._ready.set()
        self._ready.set()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, then wait; the exit code (``-SIGKILL`` when it had to be killed), None if never started."""
        return None if self.process is None else stop_process(self.process, timeout_s)


# -- values ---------------------------------------------------------------------------------------
class Values:
    """Random field values, from plausible to absurd."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.huge_items_left = HUGE_ITEM_CALLS
        self.next_id = 0  # valid requests use item ids below this
        self.caller = "admin"  # whose credential the next call carries (see CALLERS)
        self.leased: dict[str, list[str]] = defaultdict(list)  # caller -> item ids LeaseTasks gave it: valid answers

    def string(self, plausible: bool) -> str:
        r = self.rng
        if plausible:
            return r.choice([PROJECT, PROJECT, "alice", "bob", *CLASSES, f"item-{r.randrange(300)}", "v0001"])
        return r.choice([
            lambda: "", lambda: " \t\n", lambda: PROJECT, lambda: "nosuchproject", lambda: "../../../x",
            lambda: "a/b", lambda: "x" * r.choice([230, 10_000, 100_000]), lambda: "y" * 1_000_000,
            lambda: "nul\x00inside", lambda: "\x00", lambda: "émoji😀\u202e", lambda: "'; DROP TABLE items;--",
            lambda: "".join(chr(r.randrange(1, 0x10FFFF)) for _ in range(r.randrange(1, 64)))
            .encode("utf-8", "ignore").decode("utf-8", "ignore") or "z",
            lambda: "".join(chr(r.randrange(1, 32)) for _ in range(20)),
            lambda: f"item-{r.randrange(300)}", lambda: r.choice(CLASSES),
        ])()

    def integer(self, plausible: bool) -> int:
        if plausible:
            return self.rng.choice([1, 2, 5, 10, 25, 100])
        return self.rng.choice([0, -1, 1, 2 ** 31 - 1, -2 ** 31, self.rng.randrange(-2 ** 31, 2 ** 31)])

    def double(self, plausible: bool) -> float:
        if plausible:
            return self.rng.choice([0.0, 0.9, 0.95, time.time()])
        return self.rng.choice([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, 1.0, 0.0, -1.0,
                                time.time() * 1e6])

    def count(self, plausible: bool) -> int:
        if plausible:
            return self.rng.randrange(1, 8)
        if self.huge_items_left and self.rng.random() < 0.02:
            self.huge_items_left -= 1
            return 100_000
        return self.rng.choice([0, 1, 3, 20, 1001, 50_000 if self.rng.random() < 0.1 else 200])

    def fill(self, descriptor: Descriptor, plausible: bool, depth: int = 0) -> Any:
        """A message of ``descriptor``'s type with random values in (some of) its fields."""
        message = message_factory.GetMessageClass(descriptor)()
        for f in descriptor.fields:
            if not plausible and self.rng.random() < 0.2:
                continue  # unset
            if f.message_type is not None:
                if depth > 1:
                    continue
                n = self.count(plausible) if f.is_repeated else 1
                if depth:  # a nested list (an item's responses): short, or a bulk list of them is gigabytes
                    n = min(n, 3)
                if n >= 1000 and f.is_repeated:  # many of one message, cheaply
                    one = self.fill(f.message_type, True, depth + 1)
                    items = [message_factory.GetMessageClass(f.message_type)() for _ in range(n)]
                    for k, item in enumerate(items):
                        item.CopyFrom(one)
                        if "item_id" in f.message_type.fields_by_name:
                            item.item_id = f"bulk-{k}"
                    getattr(message, f.name).extend(items)
                    continue
                for _ in range(n):  # a nested list's entries are mostly plausible (short): its wild strings multiply
                    sub = self.fill(f.message_type, plausible or (depth >= 1 and self.rng.random() < 0.8), depth + 1)
                    (getattr(message, f.name).add() if f.is_repeated else getattr(message, f.name)).CopyFrom(sub)
                continue
            value: Callable[[], Any] = {
                FieldDescriptor.TYPE_STRING: lambda: self.string(plausible),
                FieldDescriptor.TYPE_DOUBLE: lambda: self.double(plausible),
                FieldDescriptor.TYPE_INT32: lambda: self.integer(plausible),
                FieldDescriptor.TYPE_INT64: lambda: self.integer(plausible),
                FieldDescriptor.TYPE_BOOL: lambda: self.rng.random() < 0.5,
            }.get(f.type, lambda: None)
            if f.is_repeated:
                n = self.count(plausible) if self.rng.random() < 0.5 else self.rng.randrange(4)
                if n > 4 and f.type == FieldDescriptor.TYPE_STRING:  # many strings: short ones (memory stays bounded)
                    value = lambda: self.string(True) if self.rng.random() < 0.9 else "x" * 1000  # noqa: E731
                getattr(message, f.name).extend(value() for _ in range(n))
            elif (v := value()) is not None:
                setattr(message, f.name, v)
        return message


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def invalid_utf8(descriptor: Descriptor, rng: random.Random, valid: bytes) -> bytes:
    """``valid`` plus one string field whose bytes are not UTF-8."""
    strings = [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING] or list(descriptor.fields)
    number = rng.choice(strings).number if strings else 1  # an empty message: an unknown field
    bad = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"ok\x80",
                      bytes(rng.randrange(128, 256) for _ in range(9))])
    return valid + _varint(number << 3 | 2) + _varint(len(bad)) + bad


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few random flips, cuts, duplications or insertions."""
    buf = bytearray(data or b"\x00")
    for _ in range(rng.randrange(1, 4)):
        k = rng.randrange(len(buf)) if buf else 0
        kind = rng.randrange(4)
        if kind == 0 and buf:
            buf[k] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del buf[k:]
        elif kind == 2:
            buf[k:k] = buf[k:k + rng.randrange(1, 16)]
        else:
            buf[k:k] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    return bytes(buf)


WORDS = ("refund", "card", "blocked", "transfer", "pending", "fee", "atm", "limit", "top-up", "exchange", "rate")


def valid_request(method: MethodDescriptor, values: Values) -> Any:
    """A request the server should accept (or answer NOT_FOUND for a thing that does not exist yet):
    items with fresh or repeated ids for the fuzz project, answers for them, real project names."""
    rng = values.rng
    cls = message_factory.GetMessageClass(method.input_type)

    def item() -> Any:
        values.next_id += rng.random() < 0.8
        return dict(project=PROJECT, item_id=f"item-{rng.randrange(values.next_id + 1)}",
                    text=" ".join(rng.choices(WORDS, k=rng.randrange(1, 12))),
                    ingested_at=rng.choice([0.0, time.time()]))

    leased = values.leased[values.caller]
    some_id = rng.choice(leased) if leased and rng.random() < 0.8 else f"item-{rng.randrange(values.next_id + 1)}"
    me = rng.choice(("", values.caller))  # the annotator is the caller: unnamed, or named
    fields = {
        "Ingest": lambda: item(), "IngestBatch": lambda: {"items": [item() for _ in range(rng.randrange(1, 20))]},
        "LeaseTasks": lambda: dict(project=PROJECT, annotator=me, max_tasks=rng.randrange(1, 10)),
        "SubmitLabel": lambda: dict(project=PROJECT, annotator=me, item_id=some_id, label=rng.choice(CLASSES)),
        "Skip": lambda: dict(project=PROJECT, annotator=me, item_id=some_id),
        "Heartbeat": lambda: dict(project=PROJECT, annotator=me, item_ids=[some_id]),
        "CreateToken": lambda: dict(project=PROJECT, role=rng.choice(("viewer", "annotator", "owner", "admin"))),
        "ListTokens": lambda: dict(project=PROJECT),
        "RevokeToken": lambda: dict(token_id=f"{rng.randrange(16 ** 12):012x}"),  # never one of the fuzz's own
        "CreateProject": lambda: dict(name=f"p{rng.randrange(50)}", classes=CLASSES),
        "Promote": lambda: dict(project=PROJECT, version="v0001"),
        "Check": lambda: dict(service=rng.choice(("", "winnow.v1.Ingest"))),
    }.get(method.name, lambda: dict(project=PROJECT) if "project" in method.input_type.fields_by_name else {})()
    return cls(**fields)


MAX_REQUEST_BYTES = 64 * 1024 * 1024  # what one generated request may hold (the fuzz's own memory bound)


def request_bytes(method: MethodDescriptor, values: Values) -> tuple[str, bytes]:
    """(strategy, one encoded request) for ``method``, at most ``MAX_REQUEST_BYTES``."""
    strategy, payload = _request_bytes(method, values)
    if len(payload) > MAX_REQUEST_BYTES:
        raise RuntimeError(f"a generated {method.name} request is {len(payload)} bytes (a bug in the fuzz)")
    return strategy, payload


def _request_bytes(method: MethodDescriptor, values: Values) -> tuple[str, bytes]:
    rng, descriptor = values.rng, method.input_type
    strategy = rng.choices(["random_bytes", "invalid_utf8", "mutated", "extreme", "valid"],
                           weights=[15, 15, 25, 30, 15])[0]
    if strategy == "random_bytes":
        return strategy, bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 64, 512, 4096])))
    if strategy == "invalid_utf8":
        return strategy, invalid_utf8(descriptor, rng, valid_request(method, values).SerializeToString())
    if strategy == "mutated":
        return strategy, mutate(valid_request(method, values).SerializeToString(), rng)
    if strategy == "valid":
        return strategy, valid_request(method, values).SerializeToString()
    return strategy, values.fill(descriptor, rng.random() < 0.3).SerializeToString()


# -- the run --------------------------------------------------------------------------------------
# whose credential a call carries, and how often: the admin, two annotators, nobody, a forged token
CALLERS = {"admin": 40, "alice": 25, "bob": 25, "nobody": 5, "forged": 5}
FORGED = "wn_000000000000_" + "A" * 43
# what a call without a valid credential may get: the refusal, or (bytes that are no request, a
# message over gRPC's size limit) a refusal that comes before anyone is asked who they are
ANSWERS_WITHOUT_CREDENTIALS = ("UNAUTHENTICATED", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")


def _call(channels: dict[str, grpc.Channel], method: MethodDescriptor, values: Values) -> tuple[str, grpc.StatusCode]:
    """Send one request (or one client stream) of raw bytes as a random caller; (strategy, the status it got)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    values.caller = values.rng.choices(list(CALLERS), weights=list(CALLERS.values()))[0]
    channel = channels[values.caller]
    try:
        if method.client_streaming:
            n = values.count(values.rng.random() < 0.5)
            if n > 20:  # many items: refused past the per-call limit without being read
                strategy = f"stream:{n}"
                stream = (valid_request(method, values).SerializeToString() for _ in range(n))
            elif values.rng.random() < 0.4:
                strategy, stream = "stream:valid", iter([valid_request(method, values).SerializeToString()
                                                         for _ in range(n)])
            else:
                parts = [request_bytes(method, values) for _ in range(n)]
                strategy = "stream:" + ",".join(sorted({s for s, _ in parts}))
                stream = iter([p for _, p in parts])
            channel.stream_unary(path)(stream, timeout=CALL_TIMEOUT_S)
        else:
            strategy, payload = request_bytes(method, values)
            if method.server_streaming:
                for _ in channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT_S):
                    pass
            else:
                response = channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_S)
                if method.name == "LeaseTasks":
                    leases = labeling_pb2.LeaseTasksResponse.FromString(response).leases
                    mine = values.leased[values.caller]
                    mine[:] = (mine + [lease.item_id for lease in leases])[-200:]
        return strategy, grpc.StatusCode.OK
    except grpc.RpcError as error:
        return strategy, error.code()  # type: ignore[attr-defined]


def _healthy(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
        try:
            return check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def _create_project(target: str, admin: str) -> dict[str, str | None]:
    """Create the fuzz project and its annotators' tokens; the tokens of every caller in CALLERS."""
    with bearer_channel(target, admin) as channel:
        create = channel.unary_unary("/winnow.v1.Projects/CreateProject",
                                     request_serializer=projects_pb2.CreateProjectRequest.SerializeToString)
        create(projects_pb2.CreateProjectRequest(name=PROJECT, classes=CLASSES, budget_labels=50), timeout=30)
        token = channel.unary_unary("/winnow.v1.Access/CreateToken",
                                    request_serializer=access_pb2.CreateTokenRequest.SerializeToString,
                                    response_deserializer=access_pb2.CreatedToken.FromString)
        annotators = {name: token(access_pb2.CreateTokenRequest(project=PROJECT, role="annotator", name=name),
                                  timeout=30).token for name in ("alice", "bob")}
        # a few real items first, so leases, answers and the store check meet rows whatever the draws send
        batch = channel.unary_unary("/winnow.v1.Ingest/IngestBatch",
                                    request_serializer=ingest_pb2.ItemBatch.SerializeToString,
                                    response_deserializer=ingest_pb2.IngestSummary.FromString)
        batch(ingest_pb2.ItemBatch(items=[records_pb2.Item(project=PROJECT, item_id=f"seed-{k}", text=f"{w} {k}")
                                          for k, w in enumerate(WORDS)]), timeout=30)
    return {"admin": admin, **annotators, "nobody": None, "forged": FORGED}


def _channels(target: str, tokens: dict[str, str | None]) -> dict[str, grpc.Channel]:
    return {name: bearer_channel(target, token) for name, token in tokens.items()}


def _commit() -> str | None:
    """The git commit of the code under test, when it runs from a checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def run_fuzz(requests: int, out: Path, seed: int = 0, max_seconds: float = 1800.0,
             progress: Callable[[str], None] = lambda _: None) -> dict:
    """Fuzz a fresh `serve all` with ``requests`` requests (or until ``max_seconds``); write the JSON to ``out``."""
    rng = random.Random(seed)
    values = Values(rng)
    by_code: Counter[str] = Counter()
    by_method: dict[str, Counter[str]] = defaultdict(Counter)
    by_strategy: dict[str, Counter[str]] = defaultdict(Counter)
    by_caller: dict[str, Counter[str]] = defaultdict(Counter)
    leaks: list[str] = []  # calls without a valid credential that got more than a refusal
    deaths: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="winnow-fuzz-") as tmp:
        server = ServerProcess(Path(tmp))
        server.start()
        first_pid = server.process.pid  # type: ignore[union-attr]
        if server.token is None:
            raise RuntimeError("serve all printed no first admin token:\n" + "\n".join(server.lines))
        tokens = _create_project(server.target, server.token)  # type: ignore[arg-type]
        started, sent = time.monotonic(), 0
        channels = _channels(server.target, tokens)  # type: ignore[arg-type]
        try:
            while sent < requests and time.monotonic() - started < max_seconds:
                method = rng.choice(METHODS)
                strategy, code = _call(channels, method, values)
                sent += 1
                by_code[code.name] += 1
                by_method[method.name][code.name] += 1
                by_strategy[strategy.split(":")[0]][code.name] += 1
                by_caller[values.caller][code.name] += 1
                if values.caller in ("nobody", "forged") and method.containing_service.name != "Health" \
                        and code.name not in ANSWERS_WITHOUT_CREDENTIALS:
                    leaks.append(f"{values.caller} {method.name} {strategy}: {code.name}")
                if not server.alive():  # it died: note why, restart it on the same data, go on
                    deaths.append({"after_request": sent, "method": method.name, "strategy": strategy,
                                   "exit_code": server.process.poll(), "log_tail": list(server.lines)[-30:]})
                    for channel in channels.values():
                        channel.close()
                    server.start()
                    channels = _channels(server.target, tokens)  # type: ignore[arg-type]
                if sent % 500 == 0:
                    progress(f"{sent} requests, {dict(by_code)}")
            duration_s = time.monotonic() - started
            healthy_after = server.alive() and _healthy(server.target)  # type: ignore[arg-type]
            same_process = server.process.pid == first_pid  # type: ignore[union-attr]
        finally:
            for channel in channels.values():
                channel.close()
            exit_code = server.stop()
        progress("checking the store against the bus")
        consistency = check_store(Path(tmp) / "store.sqlite", Path(tmp) / "bus.sqlite")
    result = {
        "benchmark": "fuzz",
        "requests": sent,
        "requests_asked": requests,
        "by_code": dict(by_code.most_common()),
        "by_caller": {name: dict(codes.most_common()) for name, codes in sorted(by_caller.items())},
        "unauthenticated_answers": len(leaks),  # must be 0: no credential, no answer but a refusal
        "unauthenticated_answer_examples": leaks[:10],
        "internal": by_code["INTERNAL"],
        "unknown": by_code["UNKNOWN"],
        "server_restarts": len(deaths),
        "same_process": same_process,
        "healthy_after": healthy_after,
        "exit_code_on_sigterm": exit_code,
        "tracebacks_logged": server.tracebacks,
        "store_consistent": consistency["consistent"],
        "store": consistency,
        "by_method": {name: dict(codes) for name, codes in sorted(by_method.items())},
        "by_strategy": {name: dict(codes) for name, codes in sorted(by_strategy.items())},
        "deaths": deaths,
        "server_log_tail": list(server.lines)[-40:],
        "seed": seed,
        "commit": _commit(),
        "duration_s": round(duration_s, 1),
        "requests_per_s": round(sent / duration_s, 1) if duration_s else None,
        "environment": environment(),
    }
    write_json(out, result)
    return result
