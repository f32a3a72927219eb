"""A pipeline call's images back to the requests of its batch: in order, each request's `n`, none for a request
the safety checker flagged, encoded in parallel without mixing them up."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from llmops.engines.base import ImageRequest
from llmops.engines.diffusers import _split

Image = pytest.importorskip("PIL.Image")


def _request(name: str, n: int) -> ImageRequest:
    return ImageRequest(name, "x", None, 16, 16, 2, 7.5, n, 1)


def _colour(png: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(png)).getpixel((0, 0))  # type: ignore[no-any-return]


@pytest.mark.parametrize("threads", [1, 3])
def test_images_go_back_to_their_requests_in_order(threads: int) -> None:
    requests = [_request("a", 1), _request("b", 2), _request("c", 1), _request("d", 3)]
    seeds = [[1], [2, 3], [4], [5, 6, 7]]
    colours = [(i * 30, 255 - i * 30, i) for i in range(7)]
    flagged = [False, False, False, True, False, False, False]  # c's only image
    out = SimpleNamespace(images=[Image.new("RGB", (16, 16), c) for c in colours], nsfw_content_detected=flagged)
    with ThreadPoolExecutor(threads) as encoder:
        results = _split(requests, seeds, out, encoder)
    assert [r.seeds for r in results] == seeds
    assert [r.filtered for r in results] == [False, False, True, False]
    assert [[_colour(png) for png in r.images] for r in results] == [
        [colours[0]], [colours[1], colours[2]], [], [colours[4], colours[5], colours[6]]]


def test_one_flagged_image_withholds_all_of_its_requests_images() -> None:
    requests = [_request("a", 2), _request("b", 1)]
    out = SimpleNamespace(images=[Image.new("RGB", (8, 8), (i, i, i)) for i in range(3)],
                          nsfw_content_detected=[False, True, False])
    with ThreadPoolExecutor(2) as encoder:
        results = _split(requests, [[1, 2], [3]], out, encoder)
    assert (results[0].images, results[0].filtered) == ([], True)
    assert [_colour(p) for p in results[1].images] == [(2, 2, 2)]
    assert not results[1].filtered


def test_a_pipeline_without_a_safety_checker_flags_nothing() -> None:
    out = SimpleNamespace(images=[Image.new("RGB", (8, 8), (9, 9, 9))], nsfw_content_detected=None)
    with ThreadPoolExecutor(1) as encoder:
        (result,) = _split([_request("a", 1)], [[1]], out, encoder)
    assert not result.filtered
    assert [_colour(p) for p in result.images] == [(9, 9, 9)]
