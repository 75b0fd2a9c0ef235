"""The `winnow` command refuses bad input with a one-line message naming the flag, and writes nothing."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from winnow.bench.common import write_json
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.settings import (
    LoopConfig,
    ServeConfig,
    Settings,
    TrainConfig,
    options,
    resolve,
)
from winnow.services.cli import build_parser, main, settings_for
from winnow.services.demo import MARKER, prepare_out_dir


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_bench_labels_with_a_bad_csv_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("body,intent\nhello,a\n")
    out = tmp_path / "result.json"
    code, err = run(["bench", "labels", "--csv", str(csv), "--label-col", "intent", "--out", str(out)], capsys)
    assert code == 2
    assert "text_col: column 'text' not in rows.csv" in err
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_unknown_test_labels_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.csv").write_text("text,category\nhello,a\nbye,b\n")
    (tmp_path / "test.csv").write_text("text,category\nhi,c\n")
    out = tmp_path / "result.json"
    code, err = run(["bench", "labels", "--csv", str(tmp_path / "train.csv"), "--test-csv", str(tmp_path / "test.csv"),
                     "--out", str(out)], capsys)
    assert code == 2
    assert "'c' is not in the label schema" in err
    assert not out.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--seed", "abc"], "winnow: error: --seed: 'abc' is not an integer"),
    (["serve", "selector", "--grpc-port", "abc"], "winnow: error: --grpc-port: 'abc' is not an integer"),
    (["serve", "all", "--grpc-port", "70000"], "winnow: error: --grpc-port: must be <= 65535, got 70000"),
    (["serve", "all", "--metrics-port", "-1"], "winnow: error: --metrics-port: must be >= 0, got -1"),
    (["serve", "trainer", "--train-folds", "1"], "winnow: error: --train-folds: must be >= 2, got 1"),
    (["serve", "selector", "--near-duplicate", "nan"], "winnow: error: --near-duplicate: must be a finite number"),
    (["serve", "selector", "--uncertainty", "vibes"], "winnow: error: --uncertainty: 'vibes' is not one of"),
    (["serve", "selector", "--grace-s", "0"], "winnow: error: --grace-s: must be > 0, got 0.0"),
    (["demo", "--audit-probability", "1.5"], "winnow: error: --audit-probability: must be <= 1, got 1.5"),
    (["demo", "--budget", "a quarter"], "winnow: error: --budget: must look like LABELS/ITEMS"),
    (["demo", "--budget", "30/20"], "winnow: error: --budget: needs 0 <= LABELS <= ITEMS"),
    (["demo", "--overlap", "many"], "winnow: error: --overlap: 'many' is not an integer"),
    (["demo", "--noise", "0.1,lots"], "winnow: error: --noise: 'lots' is not a number"),
    (["demo", "--strategy", "psychic"], "winnow: error: --strategy: 'psychic' is not one of"),
    (["demo", "--engine", "tpu"], "winnow: error: --engine: 'tpu' is not one of onnx, torch"),
    (["demo", "--precision", "1"], "winnow: error: --precision: must be < 1, got 1.0"),
    (["bench", "throughput", "--items", "x", "--out", "t.json"], "winnow: error: --items: 'x' is not an integer"),
    (["bench", "throughput", "--repeats", "0", "--out", "t.json"], "winnow: error: --repeats: must be >= 1, got 0"),
    (["bench", "labels"], "winnow: error: --out: is required (or set WINNOW_BENCH_OUT)"),
    (["bench", "labels", "--class-skew", "0.5", "--out", "t.json"],
     "winnow: error: --class-skew: must be >= 1, got 0.5"),
    (["serve", "nonsense"], "winnow: error: service: invalid choice: 'nonsense'"),
    (["demo", "--no-such-flag", "1"], "winnow: error: unrecognized arguments: --no-such-flag 1"),
    (["demo", "--seed"], "winnow: error: --seed: expected one argument"),
])
def test_a_bad_flag_is_one_line_naming_it_and_exit_2(argv: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written, wherever it runs
    code, err = run(argv, capsys)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("variable", "value", "argv", "message"), [
    ("WINNOW_SEED", "abc", ["demo"], "--seed (from WINNOW_SEED): 'abc' is not an integer"),
    ("WINNOW_GRPC_PORT", "port", ["serve", "all"], "--grpc-port (from WINNOW_GRPC_PORT): 'port' is not an integer"),
    ("WINNOW_LEASE_S", "-5", ["serve", "labeling"], "--lease-s (from WINNOW_LEASE_S): must be > 0, got -5.0"),
    ("WINNOW_TRAIN_MEMBERS", "1e3", ["serve", "trainer"], "--train-members (from WINNOW_TRAIN_MEMBERS): '1e3' is not"),
    ("WINNOW_BENCH_ITEMS", "lots", ["bench", "throughput", "--out", "t.json"], "--items (from WINNOW_BENCH_ITEMS)"),
])
def test_a_bad_environment_variable_is_one_line_naming_flag_and_variable(
        variable: str, value: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    code, err = run(argv, capsys)
    assert code == 2 and err == f"winnow: error: {message}" + err.removeprefix(f"winnow: error: {message}")
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_serve_variables_do_not_break_other_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINNOW_GRPC_PORT", "not a port")  # meant for serve: the demo ignores it
    settings = settings_for(build_parser().parse_args(["demo"]))
    assert settings.serve == ServeConfig()


def test_flags_win_over_environment_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINNOW_SEED", "7")
    monkeypatch.setenv("WINNOW_TRAIN_L2", "0.5")
    monkeypatch.setenv("WINNOW_PROJECT", "a,b")
    args = build_parser().parse_args(["serve", "all", "--seed", "3", "--lease-s", "60", "--faiss-threads", "2"])
    settings = settings_for(args, serve=True)
    assert (settings.loop.seed, settings.loop.lease_s, settings.loop.train.l2) == (3, 60.0, 0.5)
    assert settings.serve.projects == ("a", "b") and settings.serve.faiss_threads == 2
    assert settings.loop.partitions == LoopConfig().partitions == 4  # default
    assert settings.serve.grace_s == ServeConfig().grace_s


def test_every_setting_is_a_serve_flag_whose_help_names_its_variable() -> None:
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {flag: action for action in serve._actions for flag in action.option_strings}
    every = options(Settings)
    assert len({o.flag for o in every}) == len(every) and len({o.env for o in every}) == len(every)
    for option in every:
        assert option.flag in flags, option.flag
        assert f"(env {option.env}; default" in flags[option.flag].help
    assert {f.name for f in dataclasses.fields(LoopConfig)} - {"train"} <= {o.dest for o in options(LoopConfig)}
    assert {o.flag for o in options(TrainConfig)} >= {"--train-folds", "--train-seed"}


def test_settings_refuse_bad_values_in_code_too() -> None:
    with pytest.raises(InvalidInput, match="^seed: must be >= 0"):
        LoopConfig(seed=-1)
    with pytest.raises(InvalidInput, match="^retrain_min_new: '5' is not of type int"):
        LoopConfig(retrain_min_new="5")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="^dropout: must be < 1"):
        TrainConfig(dropout=1.0)
    assert LoopConfig(lease_s=5).lease_s == 5.0 and isinstance(ServeConfig(models_dir="m").models_dir, Path)
    with pytest.raises(InvalidInput, match="--partitions"):
        resolve(LoopConfig, {"partitions": "0"})


def test_demo_never_clears_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    code, err = run(["demo", "--out-dir", ".", "--items", "5"], capsys)
    assert code == 2 and "--out-dir: '.' is not empty and is not an earlier demo's output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="--out-dir: .* is a file"):
        prepare_out_dir(tmp_path / "file")


def test_demo_clears_only_its_own_entries_of_an_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    prepare_out_dir(out)  # new folder
    assert (out / MARKER).is_file()
    (out / "winnow").mkdir()
    (out / "winnow" / "store.sqlite").write_text("old")
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("the user's")
    prepare_out_dir(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_out_dir(empty)
    assert sorted(p.name for p in empty.iterdir()) == [MARKER]


def test_result_json_is_standard_non_finite_values_are_null(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_json(out, {"threshold": math.inf, "low": -math.inf, "ece": float("nan"), "n": np.int64(3),
                     "xs": np.array([1.5, np.nan]), "f32": np.float32(0.5), "path": tmp_path, 1: True})
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"threshold": None, "low": None, "ece": None, "n": 3, "xs": [1.5, None], "f32": 0.5,
                                "path": str(tmp_path), "1": True}
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))


@pytest.mark.parametrize("option", [o for o in options(Settings) if o.kind in (int, float) or o.choices or o.prefixes],
                         ids=lambda o: o.flag)
def test_every_serve_setting_refuses_a_bad_value_in_one_line(option, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    expected = {int: "'abc' is not an integer", float: "'abc' is not a number"}.get(option.kind, "")
    if option.choices:
        expected = "'abc' is not one of"
    if option.prefixes:
        expected = "must start with"
    for given_as in ("flag", "env"):
        argv = ["serve", "all", "--project", "p"]
        if given_as == "flag":
            argv += [option.flag, "abc"]
        else:
            monkeypatch.setenv(option.env, "abc")
        code, err = run(argv, capsys)
        source = option.flag if given_as == "flag" else f"{option.flag} (from {option.env})"
        assert code == 2 and err.startswith(f"winnow: error: {source}: {expected}") and err.count("\n") == 1, err
        monkeypatch.delenv(option.env, raising=False)
    assert list(tmp_path.iterdir()) == []


def test_a_store_url_is_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["serve", "all", "--store", "mysql://admin:hunter2@db/winnow"], capsys)
    assert code == 2 and "hunter2" not in err and "--store: must start with postgresql://" in err


# -- tokens ---------------------------------------------------------------------------------------
def test_token_create_list_revoke_on_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from winnow.core.access.tokens import authenticate
    from winnow.core.adapters.sqlite_store import SqliteStore
    from winnow.core.domain.errors import Unauthenticated
    from winnow.core.domain.records import Project

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    assert main(["token", "create", "--store", url, "--role", "admin"]) == 0
    admin = capsys.readouterr().out.strip().splitlines()[-1]  # the token alone on the last line
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        assert authenticate(store.token, admin, 0.0).role == "admin"
        store.create_project(Project("p1", ("a", "b")))
    finally:
        store.close()
    assert main(["token", "create", "--store", url, "--role", "annotator", "--project", "p1", "--name", "ann",
                 "--expires-in-s", "60"]) == 0
    annotator = capsys.readouterr().out.strip().splitlines()[-1]
    token_id = annotator.split("_")[1]
    assert main(["token", "list", "--store", url, "--project", "p1"]) == 0
    listing = capsys.readouterr().out
    assert token_id in listing and "annotator" in listing and "live, expires in" in listing
    assert annotator not in listing and admin not in listing
    assert main(["token", "revoke", token_id, "--store", url]) == 0
    assert main(["token", "list", "--store", url]) == 0
    assert "revoked" in capsys.readouterr().out
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        with pytest.raises(Unauthenticated):
            authenticate(store.token, annotator, 0.0)
        assert [row[2] for row in store.audit_log("p1")] == ["token_create", "token_revoke"]
    finally:
        store.close()


@pytest.mark.parametrize(("argv", "message"), [
    (["--role", "boss"], "--role: 'boss' is not one of"),
    (["--role", "owner"], "project: a token of role owner belongs to one project"),
    (["--role", "admin", "--project", "p1"], "project: the admin role is global"),
    (["--role", "viewer", "--project", "nosuch"], "project: no project named 'nosuch'"),
    (["--role", "viewer", "--project", "p1", "--expires-in-s", "-5"], "--expires-in-s: must be > 0"),
    ([], "--role: is required"),
])
def test_token_create_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    argv: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    code, err = run(["token", "create", "--store", url, *argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_serve_makes_a_first_admin_token_only_for_an_embedded_store_that_never_had_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from winnow.core.adapters.sqlite_store import SqliteStore
    from winnow.core.domain.errors import Unauthenticated
    from winnow.services.serve import credentials

    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        with pytest.raises(InvalidInput) as refused:  # a shared store (PostgreSQL) is never given a token
            credentials(store, "postgresql://db/winnow", insecure=False)
        assert refused.value.field == "--insecure" and store.tokens() == []
        assert not credentials(store, "postgresql://db/winnow", insecure=True).secure
        auth = credentials(store, "sqlite:///store.sqlite", insecure=False)
        printed = capsys.readouterr().out
        [token] = re.findall(r"wn_[0-9a-f]{12}_[A-Za-z0-9_-]+", printed)
        assert "authorization: Bearer TOKEN" in printed and "winnow token create" in printed
        [info] = store.tokens()
        assert info.role == "admin" and auth.principal([("authorization", f"Bearer {token}")]).role == "admin"
        credentials(store, "sqlite:///store.sqlite", insecure=False)
        assert len(store.tokens()) == 1 and capsys.readouterr().out == ""  # not on later starts
        store.revoke_token(info.token_id, 1.0)
        with pytest.raises(InvalidInput):  # every token revoked: refused, not silently re-made
            credentials(store, "sqlite:///store.sqlite", insecure=False)
        with pytest.raises(Unauthenticated):
            auth.principal([])
    finally:
        store.close()


def test_erase_on_the_store_and_bus_directly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from winnow.core.adapters.sqlite_bus import SqliteBus
    from winnow.core.adapters.sqlite_store import SqliteStore
    from winnow.core.domain.records import Item, Project
    from winnow.core.loop.ingest import ingest
    from winnow.core.loop.topics import create_topics

    store, bus = SqliteStore(tmp_path / "store.sqlite"), SqliteBus(tmp_path / "bus.sqlite")
    try:
        project = Project("p1", ("a", "b"))
        store.create_project(project)
        create_topics(bus, "p1", 1)
        ingest(bus.producer(), store, project, [Item("p1", "i0", "forget me please"), Item("p1", "i1", "keep me")])
    finally:
        bus.close()
        store.close()
    urls = ["--store", f"sqlite:///{tmp_path / 'store.sqlite'}", "--bus", f"sqlite:///{tmp_path / 'bus.sqlite'}"]
    assert main(["erase", "i0", "--project", "p1", *urls]) == 0
    assert "erased 1 items (0 erased before)" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if b"forget me please" in p.read_bytes()]
    code, err = run(["erase", "ghost", "--project", "p1", *urls], capsys)
    assert code == 2 and "item_id: no item 'ghost'" in err
    code, err = run(["erase", "i1", *urls], capsys)
    assert code == 2 and "--project: is required" in err


def test_the_demo_asks_adaptive_overlap_of_its_imperfect_annotators_unless_told_otherwise() -> None:
    """One answer per item from people 2-10% wrong can never certify a 0.98 threshold (measured: the demo
    then auto-accepted nothing); adaptive overlap up to 3 asks more only where answers disagree."""
    from winnow.services.cli import DEMO_OVERLAP, OVERLAP, given
    from winnow.services.demo import DemoOptions

    assert given(build_parser().parse_args(["demo"]), DEMO_OVERLAP) == DemoOptions().overlap == 3
    assert given(build_parser().parse_args(["demo", "--overlap", "1"]), DEMO_OVERLAP) == 1
    # the other commands keep one answer per item by default
    assert given(build_parser().parse_args(["bench", "labels", "--out", "x.json"]), OVERLAP) == 1


def test_bench_preferences_takes_the_acquisition_and_sweep_seeds_and_refuses_others(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from winnow.services.cli import PREF_ACQUISITION, PREF_SWEEP, given

    args = build_parser().parse_args(["bench", "preferences", "--acquisition", "bald", "--sweep-seeds", "0",
                                      "--out", str(tmp_path / "p.json")])
    assert given(args, PREF_ACQUISITION) == "bald" and given(args, PREF_SWEEP) == 0
    defaults = build_parser().parse_args(["bench", "preferences", "--out", str(tmp_path / "p.json")])
    assert given(defaults, PREF_ACQUISITION) == "epig" and given(defaults, PREF_SWEEP) == 20
    for flag, value in (("--acquisition", "margin"), ("--sweep-seeds", "-1")):
        code, err = run(["bench", "preferences", flag, value, "--out", str(tmp_path / "p.json")], capsys)
        assert code == 2 and flag in err
    assert not (tmp_path / "p.json").exists()
