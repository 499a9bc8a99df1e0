"""PRISM's per-request work made cheaper must decide exactly as before: each fast path here is
checked against the plain code it replaces (the same hashes, the same index order, the same
floats)."""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict

from nexussched.router.policies import NoEngineAvailable, make_policy
from nexussched.router.policies.base import RequestInfo
from nexussched.router.policies.prefix_index import PrefixIndex
from nexussched.tokens import block_hashes, prompt_block_hashes, prompt_pieces, text_pieces


def _reference_block_hashes(pieces: list, block_size: int = 16) -> tuple[int, ...]:
    """block_hashes as first written (one f-string per piece): the names engines know."""
    out: list[int] = []
    prev = b"nexussched"
    for i in range(0, len(pieces) - block_size + 1, block_size):
        blk = "\x1f".join(
            (f"i{x}" if isinstance(x, int) else "s" + x) for x in pieces[i : i + block_size]
        )
        d = hashlib.blake2b(prev + blk.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out.append(int.from_bytes(d, "big") >> 1)
        prev = d
    return tuple(out)


def test_text_pieces_are_four_character_slices() -> None:
    for s in ["", "a", "abcd", "abcde", "line\nbreak\n\n", "é" * 9, "x\ud800y" * 5, "ab" * 333]:
        assert text_pieces(s) == [s[i : i + 4] for i in range(0, len(s), 4)]


def test_block_hashes_match_the_reference_for_every_kind_of_prompt() -> None:
    rng = random.Random(0)
    bodies: list[tuple[dict, bool]] = []
    for n in (0, 15, 63, 64, 65, 200, 1000):
        text = "".join(rng.choice("ab \n\u00e9\u4e2d") for _ in range(n))
        bodies.append(({"prompt": text}, False))
        bodies.append(({"prompt": [text]}, False))
        bodies.append(({"messages": [{"role": "system", "content": text}, {"role": "user",
                        "content": [{"type": "text", "text": text[::-1]}]}]}, True))  # fmt: skip
        bodies.append(({"prompt": [rng.randrange(50000) for _ in range(n)]}, False))
    bodies.append(({"prompt": "lone \ud800 surrogate " * 20}, False))
    for body, chat in bodies:
        pieces = prompt_pieces(body, chat)
        for bs in (1, 4, 16):
            assert block_hashes(pieces, bs) == _reference_block_hashes(pieces, bs), body
    # str and int pieces mixed in one block (and bools, which hash as ints)
    mixed: list = ["ab", 7, "cd", True, 0, "ef"] * 8
    for rot in range(6):
        seq = mixed[rot:] + mixed[:rot]
        assert block_hashes(seq, 16) == _reference_block_hashes(seq, 16)


def test_the_routers_prompt_hashes_are_the_pieces_hashes() -> None:
    """prompt_block_hashes (what the router computes per request) equals the reference over
    prompt_pieces, for ASCII text of every length mod a block (its short last piece too), other
    text, token ids and chat."""
    rng = random.Random(2)
    for n in [*range(0, 140), 1023, 1024, 1025, 4096, 4099]:
        ascii_text = "".join(rng.choice("ab s\x1f\n~") for _ in range(n))
        for body, chat in [
            ({"prompt": ascii_text}, False),
            ({"prompt": [ascii_text]}, False),
            ({"prompt": ascii_text + "\u00e9"}, False),
            ({"prompt": [rng.randrange(9) for _ in range(n)]}, False),
            ({"messages": [{"role": "user", "content": ascii_text}]}, True),
        ]:
            for bs in (1, 3, 16):
                want = _reference_block_hashes(prompt_pieces(body, chat), bs)
                assert prompt_block_hashes(body, chat, bs) == want, (n, bs, body)


def _reference_add(lru: OrderedDict, cap: int | None, hashes: list[int]) -> None:
    """PrefixIndex.add as a plain loop over the bulk path's definition."""
    order = list(dict.fromkeys(reversed(hashes)))
    order.reverse()
    for h in order:
        lru.pop(h, None)
    for h in order:
        lru[h] = None
    while cap is not None and len(lru) > cap:
        lru.popitem(last=False)


def test_prefix_index_short_and_long_adds_keep_the_reference_order() -> None:
    rng = random.Random(1)
    for cap in (None, 5, 40):
        idx = PrefixIndex(cap)
        ref: OrderedDict = OrderedDict()
        for _ in range(400):
            n = rng.choice([0, 1, 2, 3, 16, 17, 40])
            hashes = [rng.randrange(60) for _ in range(n)]  # repeats within one add, too
            idx.add(0, hashes)
            _reference_add(ref, cap, hashes)
            assert list(idx._lru[0]) == list(ref)


def _info(rid: int, text: str, now: float, max_tokens: int = 64, ttft: float = 1.0) -> RequestInfo:
    hashes = block_hashes(prompt_pieces({"prompt": text}, False))
    return RequestInfo(
        rid, len(text) // 4, max_tokens, now, ttft, 0.05, 0, "m", prefix_hashes=hashes
    )


def _prism_with_history(seed: int):
    rng = random.Random(seed)
    p = make_policy("prism")

    class View:
        name, healthy, num_running, num_waiting, kv_usage = "e", True, 0, 0, 0.0
        last_scrape, block_size, num_gpu_blocks = float("-inf"), 16, 4000
        inflight = inflight_prompt_tokens = inflight_max_tokens = 0

    views = [View(), View(), View()]
    now = 10.0
    prompts = ["shared system prompt " * rng.randint(1, 30) + str(k) * 40 for k in range(6)]
    for i in range(300):
        now += 0.003
        text = rng.choice(prompts)
        info = _info(i, text, now, rng.choice([8, 256]), rng.choice([0.3, 2.0]))
        idx = p.route(info, views, now)
        if idx is not None and rng.random() < 0.5:
            p.on_finish(i, idx, now)
    return p, views, now, prompts, rng


def test_bind_books_the_same_work_and_pace_as_the_engine_formulas() -> None:
    """_bind computes the prefill time, the pacing share and the prefill work inline: they must
    equal EngineState.prefill_time / prefill_work and PrismPredictor._share to the last bit."""
    from nexussched.router.policies.prism_engine import ReqState

    for seed in range(4):
        p, views, now, prompts, rng = _prism_with_history(seed)
        for k in range(60):
            text = rng.choice(prompts)
            info = _info(10_000 + k, text, now)
            r = ReqState(info, (0, 0.0), 32.0)
            r.hits = p._hits(info, len(p._eng))
            idx = rng.randrange(len(p._eng))
            e = p._eng[idx]
            base = e.base + e.c2 + e.c3 * r.ctx
            hit = r.hit(idx)
            want_work = e.prefill_time(r.prompt, base, hit)
            share = p._share(e, base, info.slo_tpot * p.cfg.tpot_margin)
            want_pace = e.prefill_work(r.prompt, hit) / share if e.paced else 0.0
            u = max(e.U, now)
            p._bind(r, idx, now)
            assert r.end == u + want_work
            assert r.pace == want_pace
            assert r.work in (want_work, 0.0)


def test_min_prefill_matches_the_engine_formula() -> None:
    from nexussched.router.policies.prism_engine import INF, ReqState

    p, views, now, prompts, rng = _prism_with_history(7)
    for e in p._eng:
        e.mixed = 50  # trusted pace: the bound is computed, not 0
    for text in prompts:
        info = _info(-1, text, now)
        r = ReqState(info, (0, 0.0), 32.0)
        r.hits = p._hits(info, len(p._eng))
        want = INF
        for e in p._eng:
            if r.prompt < e.kv_tokens:
                want = min(want, e.prefill_work(r.prompt, r.hit(e.idx)) + e.c4)
        assert p._min_prefill(r) == want


def test_telemetry_lines_parse_in_one_call_and_bad_lines_fall_back() -> None:
    import json

    from nexussched.perfmodel.telemetry import StepRecord
    from nexussched.router.telemetry_feed import parse_lines

    recs = [
        StepRecord(
            0.01 * (i + 1),
            ((16, i), (3, 0)) if i % 2 else (),
            i,
            40 * i,
            i,
            i % 3,
            0,
            0.5 * i,
            i,
            "e",
        )  # fmt: skip
        for i in range(5)
    ]
    lines = [json.dumps(r.to_dict()) for r in recs]
    docs = parse_lines(lines)
    assert docs is not None and [StepRecord.from_dict(d) for d in docs] == recs
    assert parse_lines([]) == []
    assert parse_lines([*lines[:2], "{not json", lines[3]]) is None  # each line on its own then
    assert parse_lines(["1, 2", lines[0]]) is None  # a line of two documents: no mapping
    # from_dict keeps its conversions and defaults
    r = StepRecord.from_dict({"duration": 1, "prefill_chunks": [[2.0, 3]], "num_decodes": 4.0})
    assert r == StepRecord(1.0, ((2, 3),), 4)
    assert type(r.duration) is float and type(r.prefill_chunks[0][0]) is int


def test_hit_tokens_is_the_capped_match() -> None:
    rng = random.Random(3)
    idx = PrefixIndex(30)
    chains = [[rng.randrange(1 << 40) for _ in range(12)] for _ in range(4)]
    for _ in range(300):
        idx.add(rng.randrange(3), rng.choice(chains)[: rng.randint(0, 12)])
        q = rng.choice(chains)[: rng.randint(0, 12)]
        n, cap = rng.randint(0, 4), rng.randint(0, 13)
        want = [min(k, cap) * 16 for k in idx.match(q, n)]
        assert idx.hit_tokens(q, n, cap) == want


def test_route_books_the_kv_and_hits_of_the_plain_formulas() -> None:
    """route() computes each engine's predicted hit and the KV a request adds there inline (and
    hands the chosen engine's to _bind): the same as PrismPredictor._hits and
    EngineState.kv_need computed before it was sent."""
    from nexussched.router.policies.prism_engine import ReqState

    for seed in range(4):
        p, views, now, prompts, rng = _prism_with_history(seed)
        for k in range(200):
            now += 0.002
            info = _info(20_000 + k, rng.choice(prompts) + "x" * rng.randint(0, 90), now)
            r = ReqState(info, (0, 0.0), p._expected_output(info))
            hits = p._hits(info, len(views))
            r.hits = hits
            need = [e.kv_need(r) for e in p._eng]
            idx = p.route(info, views, now)
            got = p._reqs.get(info.id)
            assert got is not None and got.hits == hits
            if idx is not None:
                assert got.kv == need[idx]
            if rng.random() < 0.6:
                p.on_finish(info.id, idx, now)


def test_expected_new_is_expected_total_from_zero() -> None:
    from nexussched.perfmodel.lengths import LengthEstimator

    rng = random.Random(5)
    for window, min_samples in ((64, 1), (4096, 1), (32, 10)):
        est = LengthEstimator(window, min_samples)
        for _ in range(700):
            for cap in (1, 2, 3, 17, 256, 4096):
                assert est.expected_new(cap) == est.expected_total(0, cap)
            m = rng.choice([1, 4, 64, 1024])
            est.observe(rng.choice([m, rng.randint(1, 2 * m), rng.randint(0, 3)]), m)


def test_repeated_prompt_blocks_hash_as_the_reference_from_the_memo(monkeypatch) -> None:
    """Blocks seen before come from a memo (by block size, keyed by the previous digest and the
    block's text): prompts sharing prefixes, repeated, interleaved over block sizes and through
    the memo's clearing, hash exactly as the reference does."""
    import nexussched.tokens as tokens

    monkeypatch.setattr(tokens, "_SEEN", {})
    monkeypatch.setattr(tokens, "SEEN_MAX", 7)  # cleared often
    rng = random.Random(9)
    system = ["You are a helpful assistant. " * k for k in (1, 3, 8)]
    for _ in range(300):
        text = rng.choice(system) + "".join(rng.choice("ab \n") for _ in range(rng.randint(0, 90)))
        bs = rng.choice((1, 3, 16))
        want = _reference_block_hashes(text_pieces(text), bs)
        assert prompt_block_hashes({"prompt": text}, False, bs) == want
        assert prompt_block_hashes({"prompt": text}, False, bs) == want  # all from the memo
    assert tokens._SEEN and all(0 < len(m) <= 7 for m in tokens._SEEN.values())
    # a wrong memo entry is what is returned: the memo really is read
    text = "one block of sixty-four ascii characters, for the memo's test..."
    assert len(text) == 64 and len(prompt_block_hashes({"prompt": text}, False, 16)) == 1
    tokens._SEEN[16][text.encode()] = (b"\0" * 8, -1)
    assert prompt_block_hashes({"prompt": text}, False, 16) == (-1,)


def test_route_skips_min_prefill_only_where_it_would_not_defer() -> None:
    """route() asks _min_prefill (is the request hopeless anywhere?) only when the engine it
    picked is not predicted to meet its TTFT: with no negative coefficient there, that
    prediction is at least the bound. Replayed against the same policy made to always ask (no
    engine marked `nonneg`), every decision and every hopeless mark is the same."""
    from nexussched.router.policies import prism_predict

    calls = [0]
    orig = prism_predict.PrismPredictor._min_prefill

    def counted(self, r):
        calls[0] += 1
        return orig(self, r)

    for seed in range(3):
        fast, views, now, prompts, rng = _prism_with_history(seed)
        slow = _prism_with_history(seed)[0]
        for p in (fast, slow):
            for e in p._eng:
                e.mixed = 50  # a trusted pace: the bound is computed, not 0
        for e in slow._eng:
            e.nonneg = False
        assert all(e.nonneg for e in fast._eng)
        now += 3.0  # past the history's backlog: predicted TTFTs near the prefill bound
        asked = {}
        hopeless = 0
        for k in range(300):
            now += 0.004
            ttft = rng.choice([rng.uniform(0.0, 0.1), 2.0])
            info = _info(30_000 + k, rng.choice(prompts), now, ttft=ttft)
            got = []
            for name, p in (("fast", fast), ("slow", slow)):
                calls[0] = 0
                prism_predict.PrismPredictor._min_prefill = counted
                try:
                    got.append(p.route(info, views, now))
                finally:
                    prism_predict.PrismPredictor._min_prefill = orig
                asked[name] = asked.get(name, 0) + calls[0]
                r = p._reqs.get(info.id)
                got.append(r is not None and r.hopeless)
            assert got[0] == got[2] and got[1] == got[3]
            hopeless += got[1]
            if got[0] is not None and rng.random() < 0.7:
                fast.on_finish(info.id, got[0], now)
                slow.on_finish(info.id, got[0], now)
        assert hopeless > 0 and asked["fast"] < asked["slow"]  # both ways taken


def test_length_window_sorted_in_c_is_the_plain_sort_and_sums() -> None:
    from nexussched.perfmodel.lengths import LengthEstimator

    rng = random.Random(4)
    est = LengthEstimator(window=50)
    for _ in range(2000):
        m = rng.choice([1, 4, 64, 300])
        est.observe(rng.choice([m, rng.randint(1, 2 * m)]), m)
        xs = est._refresh()
        if est._new:
            continue
        want = sorted(x for x in est._recent if x)
        pre = [0.0]
        for x in want:
            pre.append(pre[-1] + x)
        assert xs == want and est._prefix == pre
        assert all(type(v) is float for v in est._prefix)


def _books(p) -> tuple:
    """What on_output and on_finish change: the length window and each engine's books."""
    lens = p.lengths
    engines = [
        (e.n, e.ctx, e.kv_used, e.unfirst, e.base, dict(e.live), list(e.flights)) for e in p._eng
    ]
    return list(lens._recent), lens._hits, lens.observed, sorted(p._reqs), engines


def test_on_end_is_on_output_then_on_finish() -> None:
    """Prism.on_end (the live router's and the simulator's one call per finished request) leaves
    the books exactly as on_output then on_finish do, and the next decisions are the same."""
    for seed in range(3):
        fused, views, now, prompts, rng = _prism_with_history(seed)
        split = _prism_with_history(seed)[0]
        live: list[tuple[int, int]] = []
        for k in range(300):
            now += 0.002
            info = _info(30_000 + k, rng.choice(prompts), now, rng.choice([8, 256]))
            idx = fused.route(info, views, now)
            assert split.route(info, views, now) == idx
            if idx is not None:
                live.append((info.id, idx))
            while live and (len(live) > 20 or rng.random() < 0.3):
                rid, i = live.pop(rng.randrange(len(live)))
                n = rng.choice([None, 1, 7, 256])  # None: it did not end normally
                fused.on_end(rid, i, now, n)
                if n is not None:
                    split.on_output(rid, n)
                split.on_finish(rid, i, now)
                assert _books(fused) == _books(split)
        fused.on_end(-1, 0, now, 5)  # one it never saw: its length is still learned
        split.on_output(-1, 5)
        split.on_finish(-1, 0, now)
        assert _books(fused) == _books(split)


def test_held_requests_get_their_order_key_when_they_wait() -> None:
    """route() builds a request's queue key only when it waits at the router (Prism._keyed): a
    held or late request's key is _key() of what route() saw, in every order; a sent one has
    none."""

    class View:
        name, healthy, num_running, num_waiting, kv_usage = "e", True, 0, 0, 0.0
        last_scrape, block_size, num_gpu_blocks = float("-inf"), 16, 40  # 640 KV tokens
        inflight = inflight_prompt_tokens = inflight_max_tokens = 0

    for order in ("edf", "lifo", "cost"):
        p = make_policy("prism", order=order, shed=order == "cost")
        views = [View(), View()]
        rng = random.Random(5)
        held = sent = 0
        for k in range(40):
            info = _info(k, "a" * rng.randint(400, 1600), 1.0 + k * 0.01, rng.choice([8, 64]))
            out = p._expected_output(info)
            try:
                idx = p.route(info, views, 1.0 + k * 0.01)
            except NoEngineAvailable:
                continue  # shed
            r = p._reqs[info.id]
            if idx is None:
                held += 1
                assert r.key == p._key(info, out)
            else:
                sent += 1
                assert r.key is None
        assert held and sent
