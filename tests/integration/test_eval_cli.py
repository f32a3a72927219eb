"""`llmops eval` end to end against a real server with fake engines: a model that knows the answer, one
that does not, and a judge; errors counted (never zeros), malformed rows reported by line, resume,
reports (markdown, JSON, PNG) and `compare` with a pairwise judge asked in both orders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from llmops.cli import main
from tests.helpers import live_server, write_config

ROWS = [{"id": f"r{i}", "input": f"Capital of France? ({i})", "reference": "Paris"} for i in range(6)]


CONFIG: list[Path] = []  # the server's config: its price table


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg = write_config(tmp_path_factory.mktemp("eval") / "eval.yaml", [
        {"name": "good", "engine": "fake", "options": {"reply": "It is Paris."},
         "pricing": {"prompt_usd_per_1k": 1.0, "completion_usd_per_1k": 2.0}},
        {"name": "bad", "engine": "fake", "options": {"reply": "I do not know."}},
        {"name": "judge", "engine": "fake", "options": {"reply": "Looks fine. Score: 8 [[A]]"}},
    ], state={"backend": "memory"})
    CONFIG[:] = [cfg]
    with live_server(cfg) as base:
        yield base


@pytest.fixture
def spec(tmp_path: Path, server: str) -> Path:
    lines = [json.dumps(r) for r in ROWS]
    lines.insert(2, "{broken")  # line 3
    lines.append(json.dumps({"id": "boom", "input": "[[fail]] please", "reference": "Paris"}))  # the engine fails
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    spec = {"dataset": "data.jsonl", "max_tokens": 16,
            "scorers": [{"kind": "contains"}, {"kind": "judge", "model": "judge", "base_url": f"{server}/v1"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "spec.yaml"


def run(spec: Path, server: str, out: Path, *targets: str, extra: tuple[str, ...] = ()) -> int:
    args = ["eval", "run", str(spec), "--server", f"{server}/v1", "--config", str(CONFIG[0]), "--out", str(out),
            *extra]
    for t in targets:
        args += ["--target", t]
    return main(args)


def test_run_report_resume(spec: Path, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert run(spec, server, out, "model=bad", "model=good", extra=("--concurrency", "3")) == 0
    text = capsys.readouterr().out
    assert "line 3: not JSON" in text  # the malformed row, by line
    summary = json.loads((out / "report.json").read_text())
    bad, good = summary["targets"]
    assert (bad["rows"], bad["errors"], good["errors"]) == (7, 1, 1)  # the [[fail]] row: an error, not a zero
    assert "HTTP 500" in good["error_examples"][0]
    assert (good["scores"]["contains"]["mean"], bad["scores"]["contains"]["mean"]) == (1.0, 0.0)
    assert good["scores"]["contains"]["n"] == 6
    assert good["scores"]["judge"]["mean"] == pytest.approx(7 / 9, abs=1e-4)  # "Score: 8"
    assert good["cost_usd"] > 0
    assert bad["cost_usd"] == 0.0  # its price table is all zeros
    contains = next(c for c in summary["comparisons"] if c["scorer"] == "contains")
    assert (contains["wins"], contains["ties"], contains["losses"], contains["diff"]) == (6, 0, 0, 1.0)
    assert contains["better"] == "good"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "good better" in (out / "report.md").read_text()

    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 14
    assert run(spec, server, out, "model=bad", "model=good") == 0  # resume: only the failed rows again
    assert len((out / "results.jsonl").read_text().splitlines()) == 16


def test_malformed_rows_fail_when_asked(spec: Path, server: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(spec, server, tmp_path / "r", "model=good", extra=("--on-error", "fail")) == 2
    assert "data.jsonl:line 3: not JSON" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_model_is_an_error_per_row(spec: Path, server: str, tmp_path: Path) -> None:
    assert run(spec, server, tmp_path / "r", "model=nope", extra=("--limit", "2")) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert [r["error"][:8] for r in records] == ["HTTP 404", "HTTP 404"]
    target = json.loads((tmp_path / "r" / "report.json").read_text())["targets"][0]
    assert (target["errors"], target["scores"]["contains"]["mean"]) == (2, None)


def test_compare_runs_with_a_pairwise_judge(spec: Path, server: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run(spec, server, tmp_path / "a", "model=bad") == 0
    assert run(spec, server, tmp_path / "b", "model=good") == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"),
                 "--judge", f"model=judge,base_url={server}/v1"]) == 0
    assert "good better" in capsys.readouterr().out
    summary = json.loads((tmp_path / "c" / "report.json").read_text())
    # the fake judge always says [[A]]: asked in both orders, that is a tie on every row, never a win
    (pair,) = summary["pairwise"]
    assert (pair["wins"], pair["ties"], pair["losses"], pair["mean"]) == (0, 6, 0, 0.5)
    assert (tmp_path / "c" / "report.png").exists()


def test_rescore_without_asking_again(spec: Path, server: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run(spec, server, out, "model=good", extra=("--limit", "2")) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    data = yaml.safe_load(spec.read_text())
    data["scorers"] = [{"kind": "contains"}, {"kind": "exact"}, {"kind": "regex", "pattern": "^It is"}]
    spec.write_text(yaml.safe_dump(data))
    assert main(["eval", "report", str(out), "--rescore"]) == 0
    summary = json.loads((out / "report.json").read_text())
    scores = summary["targets"][0]["scores"]
    assert (scores["contains"]["mean"], scores["exact"]["mean"], scores["regex"]["mean"]) == (1.0, 0.0, 1.0)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(lines)  # nothing asked again
