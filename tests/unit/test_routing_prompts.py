from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmops.cli import main
from llmops.errors import ConfigError, InvalidRequest
from llmops.pipeline.routing import Router
from llmops.prompts.registry import PromptRegistry, publish
from llmops.settings import RouteConfig

AB = RouteConfig.model_validate({"name": "chat", "sticky": "user", "fallbacks": ["c"],
                                 "variants": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10}]})


def test_a_90_10_split_holds_over_1000_callers() -> None:
    router = Router([AB])
    picks = [router.plan("chat", None, f"user-{i}").chain[0] for i in range(1000)]
    share_b = picks.count("b") / len(picks)
    assert 0.07 <= share_b <= 0.13  # 10 % +- 3 points (binomial sd ~0.95 points)
    unsticky = Router([AB.model_copy(update={"sticky": "none"})], rng=random.Random(7).random)
    share_b = [unsticky.plan("chat", None, None).chain[0] for _ in range(1000)].count("b") / 1000
    assert 0.07 <= share_b <= 0.13


def test_assignment_is_sticky_and_fallbacks_follow() -> None:
    router = Router([AB])
    for user in ("alice", "bob", "carol"):
        chains = {router.plan("chat", None, user).chain for _ in range(20)}
        assert len(chains) == 1
        chain = chains.pop()
        assert chain[1:] == ("c",)
    keyed = Router([AB.model_copy(update={"sticky": "key"})])
    assert len({keyed.plan("chat", "key_1", f"u{i}").chain[0] for i in range(50)}) == 1  # the key wins
    assert router.plan("gemma", None, None).chain == ("gemma",)  # not an alias: itself


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


V1 = """variables: [product]
messages:
  - {role: system, content: "You support {{ product }}."}
"""


def test_published_prompts_never_change(tmp_path: Path) -> None:
    write(tmp_path, "support/1.yaml", V1)
    assert main(["prompts", "publish", str(tmp_path)]) == 0
    write(tmp_path, "support/2.yaml", V1.replace("support", "help"))  # a draft: not served until published
    registry = PromptRegistry(str(tmp_path))
    assert registry.versions("support") == ["1"]
    rendered = registry.render(registry.get("support", None), {"product": "llmops"})
    assert rendered == [("system", "You support llmops.")]
    with pytest.raises(InvalidRequest, match="missing product"):
        registry.render(registry.get("support", "1"), {})
    with pytest.raises(InvalidRequest, match="no published version"):
        registry.get("support", "7")
    write(tmp_path, "support/1.yaml", V1.replace("support", "assist"))  # editing a published version
    with pytest.raises(ConfigError, match="changed after publication"):
        PromptRegistry(str(tmp_path))
    with pytest.raises(ConfigError, match="changed after publication"):
        publish(tmp_path)
