"""The semantic cache (opt-in): a chat request whose normalised text is close enough to one answered before
gets that answer. Nearest neighbour by cosine similarity over the embeddings of normalised requests, above a
threshold, within a namespace (the model, the prompt version and every other field of the request that
shapes the answer), so "What's the capital of France?" can answer "what is the capital of france" but never
another model's or another prompt version's question. In the process by default; in Redis (shared by
replicas) with the redis state backend. A lookup failure is a miss: the cache never fails a request.

Embeddings are blind to what makes near-misses different questions ("what is 2+2" scores 0.90 against
"what is 2+3", "is it safe" 0.995 against "is it not safe"), so a neighbour at or above the threshold is
served only when the guard (`cache_guard`) finds the two texts agree on their numbers, code, negations,
names, bound words and, one for one, their content words. Each entry keeps its request's guard signature
(`Signature.dumps()`, computed once, at the lookup); the guard checks at most `GUARD_CANDIDATES`
neighbours above the threshold, best first, so a near-miss that embeds closest does not hide an entry that
agrees (the cache stores the refused request's answer too, and "2+2"'s own entry is then the one to find).

Its interface is small: `lookup(namespace, text, deadline=, priority=) -> Lookup` (the hit, if any, and the
vector to store under) and `store(lookup, body)`; the cache stage (pipeline/stages.py) calls nothing else.
The embedding waits at the embeddings model's admission like any request to it.

What it does on the event loop does not grow with the number of entries: a namespace's vectors are scored
in one matrix-vector product, in a worker thread when there are many (`_best`); Redis sends a lookup one
string of vectors, at most `MAX_SCAN_ROWS` of them, and the best entry's answer only when it is a hit. Few
vectors stay on the loop, where they cost less than the hop to a thread. An answer is written and read as
JSON on the loop, as every body is (the request's own is parsed there too): bounded by
`cache.max_entry_bytes`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llmops.engines.registry import require
from llmops.errors import ConfigError, DeadlineExceeded
from llmops.pipeline.cache_guard import Signature, WordRule, conflict, signature
from llmops.scheduling.admission import Priority

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from llmops.scheduling.pool import ModelPool
    from llmops.settings import Settings
    from llmops.stores.redis_store import RedisGuard

log = logging.getLogger("llmops.semantic_cache")
Embed = Callable[[Sequence[str], float, Priority], Awaitable[list[list[float]]]]  # texts, deadline, priority
Accept = Callable[[str | None], bool]  # a candidate's stored tag (None: it has none) -> may it answer?
GUARD_RULE: WordRule = "swap"  # the guard's rule for content words (cache_guard.WordRule), as the app builds it
GUARD_CANDIDATES = 4  # neighbours at or above the threshold the guard checks, best first, before a miss
OFF_LOOP_GUARD_CHARS = 4096  # a longer request's guard signature (about 1 us a word) is read in a worker thread


def normalise(messages: Sequence[tuple[str, str]]) -> str:
    """The request as the cache compares it: roles and texts, whitespace and end punctuation folded. Its case
    is kept for the guard, which reads names from capitals; the lookup embeds it lower-cased."""
    parts = []
    for role, text in messages:
        folded = re.sub(r"\s+", " ", text).strip().rstrip("?!. ")
        parts.append(f"{role}: {folded}")
    return "\n".join(parts)


def namespace(payload: dict[str, Any]) -> str:
    """Everything but the messages that the answer depends on (model, prompt version, sampling, ...)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class VectorIndex(Protocol):
    async def nearest(self, space: str, vector: list[float], *, floor: float = -math.inf,
                      accept: Accept | None = None) -> tuple[float, str | None] | None:
        """The best score in `space` and its answer (stored text); None when the namespace is empty. The
        answer may be None when the score is below `floor` (the caller's threshold: not worth fetching).
        With `accept`: the score and answer of the best of the (at most GUARD_CANDIDATES) entries at or
        above `floor` whose tag it accepts, tried best first; the best score and None when it takes none."""

    async def add(self, space: str, vector: list[float], body: str, ttl_s: float, tag: str = "") -> None:
        """`tag`: what `accept` is given for this entry (the guard's signature of its request)."""
    async def close(self) -> None: ...


# What runs on the event loop and what in a worker thread. Scoring 1,000 MiniLM
# vectors (384 floats) takes about 30 us, 16,384 about 1.1 ms; a hop to a thread costs the loop about 30 us.
OFF_LOOP_SCORES = 2**19  # vectors x their size above which they are scored in a worker thread (1,365 MiniLM)
# A Redis lookup reads every vector of its namespace, which costs the loop about 0.5 ms a MiB (4 bytes a
# float: 1.5 MiB for 1,024 MiniLM vectors), so a namespace there holds at most this many entries, whatever
# cache.semantic.max_entries says.
MAX_SCAN_ROWS = 4096


def _best(matrix: NDArray[np.float32], vector: NDArray[np.float32], expires: NDArray[np.float64] | None = None,
          now: float = 0.0, k: int = 1) -> list[tuple[int, float]]:
    """The `k` rows with the best cosine (vectors are unit length: the dot product) and their scores, best
    first; none when every row has expired. One matrix-vector product (numpy lets go of the GIL for it) and
    a partial sort of k rows."""
    import numpy as np

    scores = matrix @ vector
    if expires is not None:
        scores[expires < now] = -np.inf  # expired, not swept yet (a shorter ttl than the oldest's)
    if k == 1 or len(scores) == 1:
        rows = [int(np.argmax(scores))]
    else:
        top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k]
        rows = [int(row) for row in top[np.argsort(-scores[top], kind="stable")]]
    return [(row, float(scores[row])) for row in rows if scores[row] != -np.inf]


def _pick(ranked: list[tuple[int, float]], tags: Sequence[str | None], floor: float,
          accept: Accept | None) -> tuple[float, int | None]:
    """Of the ranked rows (`tags` theirs, in order), the first at or above `floor` that `accept` takes, and
    its score; the best score and None when none is taken (or `accept` is None: the best row, whatever)."""
    if accept is None:
        return ranked[0][1], ranked[0][0]
    for (row, score), tag in zip(ranked, tags, strict=False):
        if not score >= floor:
            break
        if accept(tag):
            return score, row
    return ranked[0][1], None


# Bounds of the in-process index across namespaces: a namespace changes with every option that shapes the
# answer (temperature included), so how many there are is the clients' choice. No setting holds these yet
# (settings.py bounds each namespace: cache.semantic.max_entries), hence module constants.
MAX_TOTAL_ENTRIES = 16_384  # entries in all namespaces together (never below cache.semantic.max_entries)
MAX_TOTAL_BYTES = 128 * 2**20  # stored answers' JSON plus their vectors (float32), all namespaces together
SWEEP_SLACK_S = 5.0  # with no requests, expired entries are freed at most this long after they expire
_FIRST_ROWS = 8  # a namespace's matrix starts with room for this many vectors, doubling as it fills


class _Space:
    """One namespace: its vectors the rows of one float32 matrix (a lookup is one matrix-vector product),
    each row's key, answer, tag and expiry alongside. A removed row is filled by the last one; `rows` (key ->
    row) keeps the order entries were added in, oldest first. `version` counts removals: a lookup that scored
    the rows in a worker thread keeps its result only if no row moved meanwhile (adding one moves none)."""

    def __init__(self, size: int) -> None:
        import numpy as np

        self.matrix: NDArray[np.float32] = np.empty((_FIRST_ROWS, size), np.float32)
        self.expires: NDArray[np.float64] = np.empty(_FIRST_ROWS, np.float64)
        self.keys: list[str] = []
        self.bodies: list[str] = []
        self.tags: list[str] = []
        self.rows: dict[str, int] = {}
        self.version = 0

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def size(self) -> int:
        return int(self.matrix.shape[1])

    def oldest(self) -> str:
        return next(iter(self.rows))

    def ranked(self, vector: NDArray[np.float32], now: float, k: int) -> list[tuple[int, float]]:
        """The best `k` rows among the entries not expired, and their cosines."""
        n = len(self.keys)
        return _best(self.matrix[:n], vector, self.expires[:n], now, k) if n else []

    def pick(self, ranked: list[tuple[int, float]], floor: float,
             accept: Accept | None) -> tuple[float, str | None] | None:
        """The answer of the ranked rows' first that `accept` takes (VectorIndex.nearest)."""
        if not ranked:
            return None
        score, row = _pick(ranked, [self.tags[r] for r, _ in ranked], floor, accept)
        return score, None if row is None else self.bodies[row]

    def add(self, key: str, vector: NDArray[np.float32], body: str, tag: str, expires: float) -> None:
        n = len(self.keys)
        if n == len(self.matrix):
            self._resize(2 * n)
        self.matrix[n], self.expires[n] = vector, expires
        self.keys.append(key)
        self.bodies.append(body)
        self.tags.append(tag)
        self.rows[key] = n

    def remove(self, key: str) -> None:
        self.version += 1
        row, last = self.rows.pop(key), len(self.keys) - 1
        if row != last:
            self.matrix[row], self.expires[row] = self.matrix[last], self.expires[last]
            self.keys[row], self.bodies[row], self.tags[row] = self.keys[last], self.bodies[last], self.tags[last]
            self.rows[self.keys[row]] = row
        self.keys.pop()
        self.bodies.pop()
        self.tags.pop()
        if len(self.matrix) > _FIRST_ROWS and last <= len(self.matrix) // 4:
            self._resize(len(self.matrix) // 2)

    def _resize(self, rows: int) -> None:
        import numpy as np

        n = len(self.keys)
        matrix, expires = np.empty((rows, self.size), np.float32), np.empty(rows, np.float64)
        matrix[:n], expires[:n] = self.matrix[:n], self.expires[:n]
        self.matrix, self.expires = matrix, expires


class MemoryIndex:
    """The in-process index: per namespace a matrix of vectors (`_Space`, at most `max_entries` each),
    bounded across namespaces by entries and bytes, the oldest entry evicted first. Entries leave in the
    order they were added (`_order`), which is the order they expire in (the cache gives every entry one
    ttl): any lookup or store, in any namespace, frees the expired ones, and with no requests a timer does,
    at most `SWEEP_SLACK_S` late. A namespace of more than OFF_LOOP_SCORES values is scored in a worker
    thread. numpy comes with the embeddings extra (sentence-transformers)."""

    def __init__(self, max_entries: int, *, max_total_entries: int = MAX_TOTAL_ENTRIES,
                 max_total_bytes: int = MAX_TOTAL_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        require("numpy", "embeddings")
        self.max_entries = max_entries
        self.max_total_entries = max(max_entries, max_total_entries)
        self.max_total_bytes = max_total_bytes
        self.bytes = 0  # held now: answers' JSON and vectors
        self._clock = clock
        self._spaces: dict[str, _Space] = {}
        self._order: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()  # -> expires, bytes
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._order)

    async def nearest(self, space: str, vector: list[float], *, floor: float = -math.inf,
                      accept: Accept | None = None) -> tuple[float, str | None] | None:
        """The answers and tags are at hand: `floor` only bounds the candidates `accept` is asked about."""
        import numpy as np

        now = self._clock()
        self._sweep(now)
        entries = self._spaces.get(space)
        if entries is None or entries.size != len(vector):
            return None
        row, k = np.asarray(vector, np.float32), 1 if accept is None else GUARD_CANDIDATES
        for _ in range(3):  # a store that evicts from this namespace meanwhile moves rows: score again (then here)
            n = len(entries)
            if n * entries.size <= OFF_LOOP_SCORES:
                break
            version = entries.version
            # views of the first n rows: a resize meanwhile replaces the arrays and leaves these whole, and the
            # answers are read here, on the loop, only if no row moved (reading them in the thread raced removals)
            ranked = await asyncio.to_thread(_best, entries.matrix[:n], row, entries.expires[:n], now, k)
            if entries.version == version:
                return entries.pick(ranked, floor, accept)
        return entries.pick(entries.ranked(row, now, k), floor, accept)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._spaces.clear()
        self._order.clear()
        self.bytes = 0

    async def add(self, space: str, vector: list[float], body: str, ttl_s: float, tag: str = "") -> None:
        import numpy as np

        now = self._clock()
        self._sweep(now)
        row = np.asarray(vector, np.float32)
        size = len(body) + len(tag) + row.nbytes  # the body is ASCII JSON (json.dumps escapes the rest)
        key = hashlib.sha256(row.tobytes()).hexdigest()
        if size > self.max_total_bytes:
            return
        if (space, key) in self._order:
            self._remove(space, key)
        entries = self._spaces.get(space)
        if entries is None:
            entries = self._spaces[space] = _Space(len(row))
        elif entries.size != len(row):
            return  # another model's vectors (cannot happen within one process's configuration)
        entries.add(key, row, body, tag, now + ttl_s)
        self._order[(space, key)] = (now + ttl_s, size)
        self.bytes += size
        while len(entries) > self.max_entries:
            self._remove(space, entries.oldest())
        self._bound()
        self._arm()

    def _remove(self, space: str, key: str) -> None:
        self.bytes -= self._order.pop((space, key))[1]
        entries = self._spaces[space]
        entries.remove(key)
        if not entries:
            del self._spaces[space]

    def _bound(self) -> None:
        """The oldest entries (any namespace) out until the totals are within bounds."""
        while len(self._order) > self.max_total_entries or self.bytes > self.max_total_bytes:
            self._remove(*next(iter(self._order)))

    def _sweep(self, now: float) -> None:
        """The expired entries out, oldest first (one check when none is due)."""
        while self._order:
            (space, key), (expires, _) = next(iter(self._order.items()))
            if expires >= now:
                return
            self._remove(space, key)

    def _arm(self) -> None:
        """One timer at a time, for the oldest entry's expiry (plus slack): frees them with no requests."""
        if self._timer is not None or not self._order:
            return
        expires = next(iter(self._order.values()))[0]
        delay = max(0.0, expires - self._clock()) + SWEEP_SLACK_S
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._sweep(self._clock())
        self._arm()


# Stores an entry in a namespace's two keys (KEYS[1]: its vectors, one string; KEYS[2]: a hash of each row's
# answer and tag and each vector's row): ARGV = vector (float32 bytes), its digest, answer, most rows, ttl (ms),
# tag.
# A namespace that is full takes nothing (not even a new answer for a vector it holds); one whose vectors
# expired starts over. Both keys expire with the newest entry.
_STORE = """
local size = string.len(ARGV[1])
local rows = math.floor(redis.call('STRLEN', KEYS[1]) / size)
if rows >= tonumber(ARGV[4]) then return 0 end
if rows == 0 then redis.call('DEL', KEYS[2]) end
local row = redis.call('HGET', KEYS[2], ARGV[2])
if not row then
  row = tostring(rows)
  redis.call('APPEND', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[2], row)
end
redis.call('HSET', KEYS[2], row, ARGV[3], 't' .. row, ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""


class RedisIndex:
    """Two keys per namespace (and vector size): `...:v`, the vectors (float32, little-endian) one after
    the other in one string, in the order they were stored; `...:a`, a hash of each row's answer ('0',
    '1', ...), tag ('t0', 't1', ...) and of each vector's row ('v:' and its digest: a vector stored again
    gets the new answer and tag). A lookup is one GETRANGE of at most MAX_SCAN_ROWS vectors (one bulk reply,
    read as bytes: no parsing per entry), one matrix-vector product (in a worker thread when large), and one
    HMGET of the best row's answer (with a guard, `accept`: and the tags of the candidates at or above the
    threshold) when it reaches the caller's threshold; one more HGET only when the guard refuses the best and
    takes another. An entry stored before entries had tags is refused by the guard. A store is one script
    (_STORE). Entries are kept until the namespace expires, ttl after its newest entry; a full namespace
    (max_entries, at most MAX_SCAN_ROWS) takes no more. Each call runs under the store's guard (its timeout,
    its count of errors, one log line per 10 s): a Redis error or a hung Redis is a miss (lookups) or a
    skipped store, whatever `on_error` says."""

    def __init__(self, guard: RedisGuard, prefix: str, max_entries: int) -> None:
        require("numpy", "embeddings")
        self.guard, self.prefix, self.max_entries = guard, prefix, max_entries
        self.client: Any = guard.client  # redis-py's untyped commands
        self.max_rows = min(max_entries, MAX_SCAN_ROWS)
        self._store = self.client.register_script(_STORE)

    def _keys(self, space: str, size: int) -> tuple[str, str]:
        key = f"{self.prefix}semcache:{space}:{size}"
        return f"{key}:v", f"{key}:a"

    async def close(self) -> None:
        await self.client.aclose()

    async def nearest(self, space: str, vector: list[float], *, floor: float = -math.inf,
                      accept: Accept | None = None) -> tuple[float, str | None] | None:
        import numpy as np

        row, k = np.asarray(vector, "<f4"), 1 if accept is None else GUARD_CANDIDATES
        vectors, answers = self._keys(space, len(row))
        raw = await self.guard.call("semantic_lookup", lambda: self.client.execute_command(  # bytes, whatever
            "GETRANGE", vectors, 0, self.max_rows * row.nbytes - 1, NEVER_DECODE=True),  # the client decodes
            None, always_open=True)
        n = len(raw) // row.nbytes if raw else 0
        if not n:
            return None
        matrix = np.frombuffer(raw, "<f4", n * len(row)).reshape(n, len(row))
        if matrix.size > OFF_LOOP_SCORES:
            ranked = await asyncio.to_thread(_best, matrix, row, None, 0.0, k)
        else:
            ranked = _best(matrix, row, None, 0.0, k)
        if not ranked:
            return None
        best, score = ranked[0]
        if not score >= floor:  # NaN too: a miss, not worth the answer's transfer
            return score, None
        ranked = [(r, s) for r, s in ranked if s >= floor]
        fields = [str(best)] if accept is None else [str(best), *(f"t{r}" for r, _ in ranked)]
        found = await self.guard.call("semantic_lookup", lambda: self.client.hmget(answers, fields), None,
                                      always_open=True)
        if found is None:
            return None
        picked, chosen = _pick(ranked, [_text(tag) for tag in found[1:]], floor, accept)
        if chosen is None:
            return picked, None
        body = found[0] if chosen == best else await self.guard.call(
            "semantic_lookup", lambda: self.client.hget(answers, str(chosen)), None, always_open=True)
        return None if body is None else (picked, _text(body))

    async def add(self, space: str, vector: list[float], body: str, ttl_s: float, tag: str = "") -> None:
        import numpy as np

        row = np.asarray(vector, "<f4")
        digest = hashlib.sha256(row.tobytes()).hexdigest()[:24]
        await self.guard.call("semantic_store", lambda: self._store(
            keys=list(self._keys(space, len(row))),
            args=[row.tobytes(), f"v:{digest}", body, self.max_rows, int(ttl_s * 1000), tag]), None,
            always_open=True)


def _text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (the client may or may not decode)."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Lookup:
    space: str
    vector: list[float]
    body: dict[str, Any] | None = None
    score: float = 0.0
    signature: Signature | None = None  # the request's, for the guard (stored with its answer)
    refused: list[str] = field(default_factory=list)  # why the guard refused each neighbour it was asked about

    def accepts(self, rule: WordRule) -> Accept:
        """Whether a stored entry's tag (its request's signature) agrees with this request's; the reasons
        it does not are kept in `refused`. An entry without a readable tag is refused."""
        mine = self.signature

        def accept(tag: str | None) -> bool:
            theirs = Signature.loads(tag)
            reason = "unsigned" if theirs is None or mine is None else conflict(mine, theirs, rule)
            if reason is not None:
                self.refused.append(reason)
            return reason is None

        return accept


class SemanticCache:
    """`guard`: the precision guard's rule for content words (`cache_guard.WordRule`; the app's is
    GUARD_RULE); None: the nearest neighbour at or above the threshold answers, whatever its text."""

    def __init__(self, index: VectorIndex, embed: Embed, threshold: float, ttl_s: float,
                 max_entry_bytes: int, *, guard: WordRule | None = None) -> None:
        self.index, self.embed, self.threshold = index, embed, threshold
        self.ttl_s, self.max_entry_bytes, self.guard = ttl_s, max_entry_bytes, guard

    async def lookup(self, space: str, text: str, *, deadline: float, priority: Priority = "interactive") -> Lookup:
        """`deadline` (time.monotonic()) bounds the embedding, its wait at admission included. `text` is
        `normalise`'s (case kept): it is embedded lower-cased, and the guard reads it as it is, once the
        embeddings model took it (which bounds its length)."""
        vector = (await self.embed([text.lower()], deadline, priority))[0]
        lookup = Lookup(space, vector)
        accept = None
        if self.guard is not None:
            long = len(text) > OFF_LOOP_GUARD_CHARS
            lookup.signature = await asyncio.to_thread(signature, text) if long else signature(text)
            accept = lookup.accepts(self.guard)
        found = await self.index.nearest(space, vector, floor=self.threshold, accept=accept)
        if found is not None and found[0] >= self.threshold and found[1] is not None:
            lookup.body, lookup.score = json.loads(found[1]), found[0]
        elif found is not None:
            lookup.score = found[0]
        if lookup.refused:
            log.debug("semantic cache guard refused %d neighbour(s): %s", len(lookup.refused), lookup.refused)
        return lookup

    async def close(self) -> None:
        await self.index.close()

    async def store(self, lookup: Lookup, body: dict[str, Any]) -> None:
        """Answers whose JSON is longer than max_entry_bytes are not kept."""
        stored = json.dumps(body, separators=(",", ":"))
        if len(stored) <= self.max_entry_bytes:
            tag = lookup.signature.dumps() if lookup.signature is not None else ""
            await self.index.add(lookup.space, lookup.vector, stored, self.ttl_s, tag)


def build_semantic_cache(settings: Settings, pool: ModelPool,
                         on_error: Callable[[str], None] | None = None) -> SemanticCache | None:
    """The configured semantic cache (None when it is off): its index in Redis with the redis backend, whose
    failed calls are reported to `on_error` (the operation's name), as the state store's are."""
    cfg = settings.cache.semantic
    if not cfg.enabled:
        return None
    model = settings.model(cfg.model)
    if model is None or model.kind != "embeddings":
        raise ConfigError(f"cache.semantic.model {cfg.model!r} is not an embeddings model of this server")

    async def embed(texts: Sequence[str], deadline: float, priority: Priority) -> list[list[float]]:
        served, engine = pool.embedding_engine(cfg.model)
        async with served.admission.slot(deadline, priority):
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return (await engine.embed(list(texts))).vectors
            except TimeoutError:
                raise DeadlineExceeded("the semantic cache's embedding ran past the request's deadline") from None

    index: VectorIndex
    if settings.state.backend == "redis":
        from llmops.stores import redis_store

        client = redis_store.connect(settings.state.redis_url, settings.state.redis_timeout_s)
        guard = redis_store.RedisGuard(client, settings.state.redis_timeout_s, True, on_error or (lambda _: None))
        index = RedisIndex(guard, settings.state.redis_prefix, cfg.max_entries)
    else:
        index = MemoryIndex(cfg.max_entries)
    return SemanticCache(index, embed, cfg.threshold, settings.cache.ttl_s, settings.cache.max_entry_bytes,
                         guard=GUARD_RULE)
