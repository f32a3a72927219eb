"""`llmops eval` argument handling, targets, the progress display and the report's verdicts, in-process
(no server: every case here fails or finishes before a request would be sent)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from llmops.cli import main
from llmops.errors import ConfigError
from llmops.eval.dataset import Row
from llmops.eval.progress import Progress
from llmops.eval.report import better, markdown, summarise
from llmops.eval.targets import parse_target

FACTS = str(Path(__file__).resolve().parents[2] / "evals" / "facts.yaml")


def test_parse_target() -> None:
    t = parse_target("model=gemma-3-270m,prompt=qa@2")
    assert (t.name, t.model, t.prompt) == ("gemma-3-270m@qa@2", "gemma-3-270m", "qa@2")
    assert t.prompt_ref(Row(id="r", input="hi")) == {"id": "qa", "version": "2", "variables": {"input": "hi"}}
    ext = parse_target("name=ext,model=m,base_url=https://example.com/v1,api_key_env=KEY,prompt_usd_per_1k=0.1")
    assert (ext.base_url, ext.api_key_env, ext.prompt_usd_per_1k) == ("https://example.com/v1", "KEY", 0.1)
    assert parse_target("name=b,route=chat,model=gemma").route == "chat"
    with pytest.raises(ConfigError, match="key=value"):
        parse_target("gemma")
    with pytest.raises(ConfigError, match="invalid"):
        parse_target("model=m,colour=red")


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "model=a", "--target", "model=a"], "target names must be unique"),
    (["--target", "model=a", "--concurrency", "0"], "--concurrency must be at least 1"),
    (["--target", "nonsense"], "expected key=value"),
])
def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                              message: str) -> None:
    assert main(["eval", "run", FACTS, "--out", str(tmp_path / "r"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_run_and_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "report", str(tmp_path)]) == 2
    assert "is not an eval run" in capsys.readouterr().err
    assert main(["eval", "run", str(tmp_path / "none.yaml"), "--target", "model=a", "--out", str(tmp_path)]) == 2
    assert "cannot read eval spec" in capsys.readouterr().err


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_only() -> None:
    quiet = io.StringIO()
    progress = Progress(3, "run", quiet)
    progress.advance(False)
    progress.close()
    assert quiet.getvalue() == ""
    tty = Tty()
    progress = Progress(2, "run", tty)
    progress.advance(True)
    progress.advance(False)
    progress.close()
    assert "2/2 errors 1" in tty.getvalue()
    assert tty.getvalue().endswith("\n")


def record(target: str, row: str, score: float | None, error: str | None = None) -> dict[str, object]:
    return {"target": target, "row": row, "error": error, "scores": {} if error else {"s": score},
            "latency_s": 0.1, "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": None}


def test_summary_errors_are_not_zeros_and_verdicts() -> None:
    records = {("a", f"r{i}"): record("a", f"r{i}", 0.0) for i in range(12)}
    records |= {("b", f"r{i}"): record("b", f"r{i}", 1.0) for i in range(12)}
    records[("b", "r0")] = record("b", "r0", None, error="HTTP 500: boom")
    summary = summarise(records, ["a", "b"], ["s"])
    a, b = summary["targets"]
    assert (a["errors"], a["scores"]["s"]["mean"]) == (0, 0.0)
    assert (b["errors"], b["scores"]["s"]["n"], b["scores"]["s"]["mean"]) == (1, 11, 1.0)
    (c,) = summary["comparisons"]
    assert (c["n"], c["wins"], c["better"]) == (11, 11, "b")
    text = markdown(summary, "t")
    assert "**b better**" in text
    assert "| 1/12 |" in text
    assert better({**c, "p_sign_flip": 0.2}) is None  # a CI that excludes 0 is not enough alone
