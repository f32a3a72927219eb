"""Identifiers that must be unique but need not be secret: request ids, completion ids, in-flight and
reservation holders. They come from a PRNG seeded once per process from os.urandom (and seeded again in
a forked child), so making one is no system call: `uuid.uuid4()` reads os.urandom, which releases the
GIL, and on a busy server every release lets a waiting thread take the GIL from the event loop.
The generator is Mersenne Twister: whoever sees enough of these ids (request ids are sent back to
clients) can predict the next ones, so nothing a client presents may be one of them. Anything that works
as a capability (a job id that fetches a result, an image file name, an API key) keeps using
`uuid`/`secrets`."""

from __future__ import annotations

import os
import random

_rng: random.Random | None = None


def _seeded() -> random.Random:
    global _rng
    if _rng is None:
        _rng = random.Random(os.urandom(32))
        os.register_at_fork(after_in_child=_reseed)
    return _rng


def _reseed() -> None:
    if _rng is not None:
        _rng.seed(os.urandom(32))


def unique_hex() -> str:
    """128 random bits as 32 hex digits (the shape of `uuid.uuid4().hex`)."""
    return f"{(_rng or _seeded()).getrandbits(128):032x}"
