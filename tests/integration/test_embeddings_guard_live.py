"""The input guardrails read what the real MiniLM reads: a blocked word sent as its token ids is refused as
the word is, ids no rule touches are embedded as the text they decode to. Through the official openai client
against a live server (one thread)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.helpers import live_server, write_config
from tests.integration.test_embeddings_length_live import EMBED, _need_minilm

pytestmark = pytest.mark.model
MY, PASSWORD, IS, HUNTER = 2026, 20786, 2003, 4477  # MiniLM's vocabulary: "my password is hunter"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    _need_minilm()
    rules = [{"name": "secrets", "detector": "blocklist", "stages": ["input"], "terms": ["password"]}]
    cfg = write_config(tmp_path_factory.mktemp("emb-guard") / "models.yaml", [
        {"name": EMBED, "kind": "embeddings", "engine": "sentence-transformers", "options": {"n_threads": 1}}],
        guardrails={"rules": rules, "max_input_tokens": 64})
    with live_server(cfg, ready_timeout=300) as base, \
            openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_a_blocked_word_sent_as_token_ids_is_refused(client: openai.OpenAI) -> None:
    for given in ("my password is hunter", [MY, PASSWORD, IS, HUNTER], [[MY, IS], [PASSWORD]]):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=EMBED, input=given)  # type: ignore[arg-type]
        err = info.value.body
        assert isinstance(err, dict)
        assert (err["code"], err["param"]) == ("content_filter", "input"), err


def test_ids_no_rule_touches_are_embedded_as_their_text(client: openai.OpenAI) -> None:
    ids = client.embeddings.create(model=EMBED, input=[MY, IS, HUNTER])
    text = client.embeddings.create(model=EMBED, input="my is hunter")
    assert ids.data[0].embedding == pytest.approx(text.data[0].embedding, abs=1e-5)
    assert ids.usage.prompt_tokens == 3  # the ids, counted as given


def test_token_ids_count_against_the_input_token_limit(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="about 65 tokens"):
        client.embeddings.create(model=EMBED, input=[HUNTER] * 65)
