"""The `winnow` command refuses bad input with a clear message and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from winnow.services.cli import build_parser, main


def test_bench_labels_with_a_bad_csv_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("body,intent\nhello,a\n")
    out = tmp_path / "result.json"
    code = main(["bench", "labels", "--csv", str(csv), "--label-col", "intent", "--out", str(out)])
    assert code == 2
    assert "text_col: column 'text' not in rows.csv" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_unknown_test_labels_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.csv").write_text("text,category\nhello,a\nbye,b\n")
    (tmp_path / "test.csv").write_text("text,category\nhi,c\n")
    out = tmp_path / "result.json"
    code = main(["bench", "labels", "--csv", str(tmp_path / "train.csv"), "--test-csv", str(tmp_path / "test.csv"),
                 "--out", str(out)])
    assert code == 2
    assert "'c' is not in the label schema" in capsys.readouterr().err
    assert not out.exists()


def test_budget_must_be_labels_per_items(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--budget", "a quarter"])


def test_flags_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINNOW_STRATEGY", "kcenter")
    args = build_parser().parse_args(["bench", "labels", "--out", "x.json"])
    assert args.strategy == "kcenter"


def test_serve_faiss_threads_default_to_one_and_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from winnow.services.serve import ServeOptions

    assert build_parser().parse_args(["serve", "selector"]).faiss_threads == "1" == str(ServeOptions.faiss_threads)
    monkeypatch.setenv("WINNOW_FAISS_THREADS", "2")
    assert build_parser().parse_args(["serve", "selector"]).faiss_threads == "2"
