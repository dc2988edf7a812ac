"""Every check of `validate()` and `from_state_dict()` catches a deliberately corrupted copy.

Each case corrupts one thing in a freshly encoded weight, leaving everything the earlier checks
look at intact, and expects a ValueError whose message names what broke.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import traceback

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flashllm.formats import SparseWeight, compress
from flashllm.formats import pairmap
from flashllm.formats.base import FORMAT_VERSION, check_ptr
from sparse_weights import make_weight, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W = make_weight(100, 150, 0.7, seed=31, specials=True)  # 2 x 3 blocks, every block partly full


def copy(sw: SparseWeight, **fields) -> SparseWeight:
    return dataclasses.replace(sw, tensors={k: v.clone() for k, v in sw.tensors.items()}, **fields)


def with_tensors(sw: SparseWeight, **tensors) -> SparseWeight:
    return dataclasses.replace(sw, tensors={**sw.tensors, **tensors})


def with_element(sw: SparseWeight, key: str, i: int, value: int) -> SparseWeight:
    """A copy of sw whose tensor `key` holds `value` at index i."""
    t = sw.tensors[key].clone()
    t[i] = value
    return with_tensors(sw, **{key: t})


def padding_set(fmt: str, drop: str) -> SparseWeight:
    """A weight whose last row (or column) is non-zero, relabelled one row (column) smaller:
    the non-zero now sits in block padding while every count and offset still agrees."""
    w = make_weight(128, 128, 0.5, seed=32)
    w[-1, :] = 1
    w[:, -1] = 1
    sw = compress(w, fmt)
    return dataclasses.replace(sw, shape=(127, 128) if drop == "row" else (128, 127))


def insert_bytes(data: torch.Tensor, at: int, n: int) -> torch.Tensor:
    return torch.cat([data[:at], torch.zeros(n, dtype=data.dtype), data[at:]])


def bitmap_cases():
    sw = compress(W, "bitmap")
    data, ptr = sw.tensors["data"], sw.tensors["block_ptr"]

    set_ptr = lambda i, v: with_element(sw, "block_ptr", i, v)  # noqa: E731

    ends_plus_one = data.clone()
    ends_plus_one.view(torch.int16)[int(ptr[1]) // 2 + 3] += 1  # block 1, strip 3's end
    one_more_value = ptr.clone()
    one_more_value[2:] += 16
    one_less_value = ptr.clone()
    one_less_value[1:] -= 16
    return [
        ("data dtype", with_tensors(sw, data=data.view(torch.int8)), r"bitmap data must be a 1-D uint8"),
        ("data 2-D", with_tensors(sw, data=data.view(-1, 16)), r"bitmap data must be a 1-D uint8"),
        ("ptr dtype", with_tensors(sw, block_ptr=ptr.to(torch.int32)), r"bitmap block_ptr must be int64 of length 7"),
        ("ptr length", with_tensors(sw, block_ptr=ptr[:-1]), r"bitmap block_ptr must be int64 of length 7"),
        ("ptr 2-D", with_tensors(sw, block_ptr=ptr.view(7, 1)), r"bitmap block_ptr must be int64 of length 7"),
        ("ptr[0]", with_tensors(sw, data=insert_bytes(data, 0, 16), block_ptr=ptr + 16),
         r"bitmap block_ptr\[0\] must be 0, got 16"),
        ("ptr[-1]", with_tensors(sw, data=insert_bytes(data, data.numel(), 16)),
         r"bitmap block_ptr\[-1\] = \d+ does not match the buffer size \d+"),
        ("ptr[-1] short", with_tensors(sw, data=data[:-16]),
         r"bitmap block_ptr\[-1\] = \d+ does not match the buffer size"),
        ("monotone", set_ptr(1, int(ptr[2]) + 16), r"bitmap block_ptr is not monotone"),
        ("aligned", set_ptr(1, int(ptr[1]) + 8), r"bitmap block_ptr entries must be multiples of 16"),
        ("header", set_ptr(1, 512), r"bitmap block smaller than its 528-byte header"),
        ("ends", with_tensors(sw, data=ends_plus_one), r"bitmap strip ends .* disagree with the mask popcounts"),
        ("extra values", with_tensors(sw, data=insert_bytes(data, int(ptr[2]), 16), block_ptr=one_more_value),
         r"bitmap block size disagrees with its popcount"),
        ("missing values", with_tensors(sw, data=torch.cat([data[:int(ptr[1]) - 16], data[int(ptr[1]):]]),
                                        block_ptr=one_less_value),
         r"bitmap block size disagrees with its popcount"),
        ("padding row", padding_set("bitmap", "row"), r"bitmap has mask bits set outside the \[M, K\] matrix"),
        ("padding col", padding_set("bitmap", "col"), r"bitmap has mask bits set outside the \[M, K\] matrix"),
        ("nnz", copy(sw, nnz=sw.nnz - 1), rf"bitmap nnz {sw.nnz - 1} disagrees with the mask popcount {sw.nnz}"),
        ("max_block_bytes", copy(sw, max_block_bytes=sw.max_block_bytes + 16), r"bitmap max_block_bytes"),
    ]


def tiled_csl_cases():
    sw = compress(W, "tiled_csl")
    words, ptr = sw.tensors["words"], sw.tensors["tile_ptr"]

    set_ptr = lambda i, v: with_element(sw, "tile_ptr", i, v)  # noqa: E731
    set_word = lambda i, v: with_element(sw, "words", i, v)  # noqa: E731

    first = int(words[0])
    value_bits = first & 0xFFFF
    assert value_bits != 0, "word 0 of tile 0 holds a value"
    twin = next(int(v) for v in words[1:int(ptr[1])] if int(v) & 0xFFFF)  # another value in tile 0

    # Tile 0 holds 1289 values in 1292 words.  Over-padded: 4100 more zero words aimed at one of its
    # zeros; it decodes to the same matrix, but a hostile file could make a tile of any length.
    tile0 = words[:int(ptr[1])]
    pad_word = tile0[(tile0 & 0xFFFF) == 0][:1]
    over = torch.cat([tile0, pad_word.repeat(4100), words[int(ptr[1]):]])
    over_ptr = torch.cat([ptr[:1], ptr[1:] + 4100])
    over_padded = dataclasses.replace(sw, tensors={"words": over, "tile_ptr": over_ptr},
                                      max_block_bytes=int((over_ptr[1:] - over_ptr[:-1]).max()) * 4)
    return [
        ("words dtype", with_tensors(sw, words=words.view(torch.float32)), r"tiled_csl words must be a 1-D int32"),
        ("words 2-D", with_tensors(sw, words=words.view(-1, 4)), r"tiled_csl words must be a 1-D int32"),
        ("ptr dtype", with_tensors(sw, tile_ptr=ptr.to(torch.int32)), r"tiled_csl tile_ptr must be int64 of length 7"),
        ("ptr length", with_tensors(sw, tile_ptr=ptr[1:]), r"tiled_csl tile_ptr must be int64 of length 7"),
        ("ptr[0]", with_tensors(sw, words=torch.cat([torch.zeros(4, dtype=torch.int32), words]), tile_ptr=ptr + 4),
         r"tiled_csl tile_ptr\[0\] must be 0, got 4"),
        ("ptr[-1]", with_tensors(sw, words=words[:-4]),
         r"tiled_csl tile_ptr\[-1\] = \d+ does not match the buffer size"),
        ("monotone", set_ptr(2, int(ptr[1]) - 4), r"tiled_csl tile_ptr is not monotone"),
        ("aligned", set_ptr(1, int(ptr[1]) + 2), r"tiled_csl tile_ptr entries must be multiples of 4"),
        ("location", set_word(0, (4096 << 16) | value_bits), r"tiled_csl word with a location outside its 64x64 tile"),
        ("location max", set_word(0, -1), r"tiled_csl word with a location outside its 64x64 tile"),
        ("duplicate", set_word(0, (twin & ~0xFFFF) | value_bits), r"tiled_csl tile holds two words for one position"),
        ("padding row", padding_set("tiled_csl", "row"), r"tiled_csl non-zero outside the \[M, K\] matrix"),
        ("over-padded", over_padded, r"tiled_csl tile holds more or fewer words than its non-zeros padded to 4"),
        ("value zeroed", set_word(0, first & ~0xFFFF),  # 1288 values left in 1292 words
         r"tiled_csl tile holds more or fewer words than its non-zeros padded to 4"),
        ("padding col", padding_set("tiled_csl", "col"), r"tiled_csl non-zero outside the \[M, K\] matrix"),
        ("nnz", copy(sw, nnz=sw.nnz + 1),
         rf"tiled_csl nnz {sw.nnz + 1} disagrees with the non-zero words \({sw.nnz}\)"),
        ("max_block_bytes", copy(sw, max_block_bytes=sw.max_block_bytes - 16),
         r"tiled_csl max_block_bytes is not the largest tile"),
    ]


def base_cases():
    sw = compress(W, "bitmap")
    return [
        ("format", copy(sw, format="csr"), r"unknown format 'csr'"),
        ("shape M", copy(sw, shape=(0, 150)), r"invalid shape \(0, 150\)"),
        ("shape K", copy(sw, shape=(100, -1)), r"invalid shape"),
        ("shape huge", copy(sw, shape=(2**31, 1)), r"invalid shape"),
        ("nnz < 0", copy(sw, nnz=-1), r"nnz -1 outside \[0, M\*K = 15000\]"),
        ("nnz > M*K", copy(sw, nnz=15001), r"nnz 15001 outside \[0, M\*K = 15000\]"),
        ("wrong block count", copy(sw, shape=(100, 250)), r"bitmap block_ptr must be int64 of length 9"),
    ]


def sell_cases():
    sw = compress(W, "sell")
    entries, ptr = sw.tensors["entries"], sw.tensors["slice_ptr"]
    nonzero = ((entries & 0x7FFF) != 0).nonzero().squeeze(1)
    first, second = int(nonzero[0]), int(nonzero[1])

    set_entry = lambda i, v: with_element(sw, "entries", i, v)  # noqa: E731
    set_ptr = lambda i, v: with_element(sw, "slice_ptr", i, v)  # noqa: E731

    low = lambda i: int(entries[i]) & 0xFFFF  # noqa: E731
    return [
        ("entries dtype", with_tensors(sw, entries=entries.view(torch.float32)), r"sell entries must be a 1-D int32"),
        ("ptr length", with_tensors(sw, slice_ptr=ptr[1:]), r"sell slice_ptr must be int64 of length 5"),
        ("ptr[0]", set_ptr(0, 128), r"sell slice_ptr\[0\] must be 0, got 128"),
        ("monotone", set_ptr(1, int(ptr[2]) + 128), r"sell slice_ptr is not monotone"),
        ("aligned", set_ptr(1, int(ptr[1]) + 4), r"sell slice_ptr entries must be multiples of 128"),
        ("offset past the chunk", set_entry(first, (2048 * 16 << 16 | low(first)) - 2**32),
         r"sell entry with a column offset outside its chunk"),
        ("padding offset", set_entry(int(((entries & 0x7FFF) == 0).nonzero()[0]), 8 << 16),
         r"sell entry with a column offset outside its chunk \(or not a multiple of 16\)"),
        ("column past K", set_entry(first, (200 * 16 << 16) | low(first)), r"sell non-zero outside the \[M, K\] matrix"),
        ("padding row", padding_set("sell", "row"), r"sell non-zero outside the \[M, K\] matrix"),
        ("duplicate", set_entry(second, (int(entries[first]) & ~0xFFFF) | low(second)) if
         (first % 128) // 4 == (second % 128) // 4 else copy(sw, nnz=-5), r"sell holds two non-zero entries|nnz -5"),
        ("nnz", copy(sw, nnz=sw.nnz + 1), rf"sell nnz {sw.nnz + 1} disagrees with the non-zero entries \({sw.nnz}\)"),
        ("max_block_bytes", copy(sw, max_block_bytes=sw.max_block_bytes + 512), r"sell max_block_bytes"),
    ]


def pairmap_word_index(sw: SparseWeight, block: int, row: int, col: int) -> int:
    """int32 index in `data` of the stored word of the (live) pair holding block position (row, col)."""
    g, q = row % 8, (row % 16) // 8 + 2 * ((col % 16) // 8)
    s, f, lane = row // 16, col // 16, 4 * g + (col % 8) // 2
    start = int(sw.tensors["block_ptr"][block])
    masks = sw.tensors["data"][start + 16:start + 272].view(torch.int32).tolist()
    word = (s * 4 + f) * 4 + q
    assert masks[word] >> lane & 1, "the pair is live"
    below = masks[:word] + [masks[word] & ((1 << lane) - 1)]
    rank = sum(bin(m & 0xFFFFFFFF).count("1") for m in below)  # the popcount rule
    return (start + 272) // 4 + rank


def pairmap_cases():
    sw = compress(W, "pairmap")
    data, ptr = sw.tensors["data"], sw.tensors["block_ptr"]
    assert ptr.tolist() == [0, 4608, 8928, 10608, 13184, 15664, 16784]  # 1082, 1012, 352, 574, 551, 210 pairs
    b1, b2, b3 = int(ptr[1]), int(ptr[2]), int(ptr[3])

    set_ptr = lambda i, v: with_element(sw, "block_ptr", i, v)  # noqa: E731

    def with_data(edit):
        d = data.clone()
        edit(d)
        return with_tensors(sw, data=d)

    def bump_end(d):  # block 1, strip 2's end
        d.view(torch.int16)[b1 // 2 + 2] += 1

    def ends_padding(d):  # block 2, header entry 5 (after the 4 strip ends: must be zero)
        d.view(torch.int16)[b2 // 2 + 5] = 1

    masks3 = data[b3 + 16:b3 + 272].view(torch.int32)
    word3 = int((masks3 != -1).nonzero()[0])
    bit3 = next(i for i in range(32) if not int(masks3[word3]) >> i & 1)

    def mask_bit(d):  # block 3: one more live pair, header untouched
        d.view(torch.int32)[b3 // 4 + 4 + word3] |= 1 << bit3

    masks1 = data[b1 + 16:b1 + 272].view(torch.int32)
    word1 = int((masks1 != -1).nonzero()[-1])  # in strip 3
    bit1 = next(i for i in range(32) if not int(masks1[word1]) >> i & 1)

    def bit_without_word(d):  # block 1 (1012 pairs: 253 full rows): bit and strip end agree, no word added
        d.view(torch.int32)[b1 // 4 + 4 + word1] |= 1 << bit1
        d.view(torch.int16)[b1 // 2 + 3] += 1

    assert int(data.view(torch.int32)[272 // 4]) != 0

    def zero_word(d):  # block 0's first word (a live pair's) stores 0: a live pair with nothing in it
        d.view(torch.int32)[272 // 4] = 0

    one_more_row = ptr.clone()
    one_more_row[2:] += 16
    one_less_row = ptr.clone()
    one_less_row[1:] -= 16

    # K = 63: every block's pairs (62, 63) straddle the K edge; row 0's is live, its high half padding
    odd = make_weight(70, 63, 0.5, seed=33)
    odd[0, 62] = 1
    sw_odd = compress(odd, "pairmap")
    straddle = sw_odd.tensors["data"].clone()
    at = pairmap_word_index(sw_odd, 0, 0, 62)
    assert int(straddle.view(torch.int32)[at]) >> 16 == 0, "the padding half is stored as +0"
    straddle.view(torch.int32)[at] |= 0x3C00 << 16

    # Columns 126, 127 non-zero, relabelled K = 126: pairs (126, 127) live and wholly in block padding
    w = make_weight(128, 128, 0.5, seed=32)
    w[:, 126:] = 1
    pair_in_padding = dataclasses.replace(compress(w, "pairmap"), shape=(128, 126))
    return [
        ("pm data dtype", with_tensors(sw, data=data.view(torch.int8)), r"pairmap data must be a 1-D uint8"),
        ("pm data 2-D", with_tensors(sw, data=data.view(-1, 16)), r"pairmap data must be a 1-D uint8"),
        ("pm ptr dtype", with_tensors(sw, block_ptr=ptr.to(torch.int32)),
         r"pairmap block_ptr must be int64 of length 7"),
        ("pm ptr length", with_tensors(sw, block_ptr=ptr[:-1]), r"pairmap block_ptr must be int64 of length 7"),
        ("pm block count", copy(sw, shape=(100, 250)), r"pairmap block_ptr must be int64 of length 9"),
        ("pm ptr[0]", with_tensors(sw, data=insert_bytes(data, 0, 16), block_ptr=ptr + 16),
         r"pairmap block_ptr\[0\] must be 0, got 16"),
        ("pm ptr[-1]", with_tensors(sw, data=insert_bytes(data, data.numel(), 16)),
         r"pairmap block_ptr\[-1\] = 16784 does not match the buffer size 16800"),
        ("pm ptr[-1] short", with_tensors(sw, data=data[:-16]),
         r"pairmap block_ptr\[-1\] = 16784 does not match the buffer size 16768"),
        ("pm monotone", set_ptr(1, b2 + 16), r"pairmap block_ptr is not monotone"),
        ("pm aligned", set_ptr(1, b1 + 8), r"pairmap block_ptr entries must be multiples of 16"),
        ("pm aligned 4", set_ptr(2, b2 + 4), r"pairmap block_ptr entries must be multiples of 16"),
        ("pm header", set_ptr(1, 256), r"pairmap block smaller than its 272-byte header and masks"),
        ("pm last header", set_ptr(5, int(ptr[6]) - 256),
         r"pairmap block smaller than its 272-byte header and masks"),
        ("pm ends", with_data(bump_end), r"pairmap strip ends in a block header disagree with the mask popcounts"),
        ("pm ends padding", with_data(ends_padding), r"pairmap strip ends .* disagree with the mask popcounts"),
        ("pm mask bit", with_data(mask_bit), r"pairmap strip ends .* disagree with the mask popcounts"),
        ("pm bit without word", with_data(bit_without_word),
         r"pairmap block size disagrees with its popcount \(words missing or extra\)"),
        ("pm extra words", with_tensors(sw, data=insert_bytes(data, b2, 16), block_ptr=one_more_row),
         r"pairmap block size disagrees with its popcount"),
        ("pm missing words", with_tensors(sw, data=torch.cat([data[:b1 - 16], data[b1:]]), block_ptr=one_less_row),
         r"pairmap block size disagrees with its popcount"),
        ("pm padding row", padding_set("pairmap", "row"),
         r"pairmap has mask bits set outside the \[M, K\] matrix \(in block padding\)"),
        ("pm padding pair", pair_in_padding, r"pairmap has mask bits set outside the \[M, K\] matrix"),
        ("pm straddling value", with_tensors(sw_odd, data=straddle),
         r"pairmap stores a non-zero outside the \[M, K\] matrix \(in block padding\)"),
        ("pm padding col", padding_set("pairmap", "col"), r"pairmap stores a non-zero outside the \[M, K\] matrix"),
        ("pm nnz", copy(sw, nnz=sw.nnz - 1),
         rf"pairmap nnz {sw.nnz - 1} disagrees with the stored non-zeros \({sw.nnz}\)"),
        ("pm word zeroed", with_data(zero_word), r"pairmap marks a pair live whose word holds no non-zero"),
        ("pm max_block_bytes", copy(sw, max_block_bytes=sw.max_block_bytes + 16),
         r"pairmap max_block_bytes 4624 is not the largest block \(4608\)"),
        ("pm max_block_bytes low", copy(sw, max_block_bytes=sw.max_block_bytes - 16),
         r"pairmap max_block_bytes 4592 is not the largest block"),
    ]


PAIRMAP_CASES = pairmap_cases()
CASES = bitmap_cases() + tiled_csl_cases() + sell_cases() + PAIRMAP_CASES + base_cases()


@pytest.mark.parametrize("name,corrupt,message", CASES, ids=[c[0] for c in CASES])
def test_validate_catches(name, corrupt, message):
    with pytest.raises(ValueError, match=message):
        corrupt.validate()


def test_the_originals_are_valid():
    for fmt in ("bitmap", "tiled_csl", "sell", "pairmap"):
        compress(W, fmt).validate()
    compress(make_weight(70, 63, 0.5, seed=33), "pairmap").validate()


def _raise_lines(fn) -> set[int]:
    """Line numbers of every fail(...) / check_ptr(...) call in fn's source."""
    lines, first = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    return {first + node.lineno - 1 for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("fail", "check_ptr")}


def test_pairmap_cases_reach_every_raise():
    """Each fail() in pairmap.validate (and in the check_ptr it calls) is where some case raises."""
    want = {(pairmap.validate.__code__, n) for n in _raise_lines(pairmap.validate)}
    want |= {(check_ptr.__code__, n) for n in _raise_lines(check_ptr)}
    reached = set()
    for _, corrupt, _ in PAIRMAP_CASES:
        with pytest.raises(ValueError) as info:
            corrupt.validate()
        for frame, line in traceback.walk_tb(info.value.__traceback__):
            if frame.f_code in (pairmap.validate.__code__, check_ptr.__code__):
                reached.add((frame.f_code, line))
    missing = sorted(n for _, n in want - reached)
    assert not missing, f"no pairmap case raises at line(s) {missing}"
    assert len(want) == 10 + 5  # 9 fail() and check_ptr() in validate, 5 fail() in check_ptr


# ---- from_state_dict: what a file can get wrong before the format checks run ----

def state_dict(fmt="bitmap"):
    return {k: v.clone() for k, v in compress(W, fmt).state_dict().items()}


def with_meta(i, value, fmt="bitmap"):
    d = state_dict(fmt)
    d["meta"][i] = value
    return d


def without(key):
    d = state_dict()
    del d[key]
    return d


def plus(key):
    d = state_dict()
    d[key] = torch.zeros(1)
    return d


def retyped_meta(meta_fn):
    d = state_dict()
    d["meta"] = meta_fn(d["meta"])
    return d


STATE_DICT_CASES = [
    ("no meta", without("meta"), r"no 'meta' tensor"),
    ("meta dtype", retyped_meta(lambda m: m.to(torch.int32)), r"'meta' must be int64 of shape \(7,\)"),
    ("meta shape", retyped_meta(lambda m: m[:6]), r"'meta' must be int64 of shape \(7,\)"),
    ("version", with_meta(0, FORMAT_VERSION + 1), rf"format version {FORMAT_VERSION + 1} not supported"),
    ("format code", with_meta(1, 9), r"unknown format code 9"),
    ("dtype code", with_meta(4, 7), r"unknown dtype code 7"),
    ("missing tensor", without("data"), r"bitmap state dict: missing tensors \['data'\]"),
    ("extra tensor", plus("words"), r"bitmap state dict: missing tensors \[\], unexpected \['words'\]"),
    ("other format's tensors", with_meta(1, 1), r"tiled_csl state dict: missing tensors \['words', 'tile_ptr'\]"),
    ("shape", with_meta(2, 0), r"invalid shape \(0, 150\)"),
    ("nnz", with_meta(5, 10**12), r"nnz 1000000000000 outside"),
    ("max block", with_meta(6, 0), r"bitmap max_block_bytes 0 is not the largest block"),
    ("tensors validated", with_meta(5, 0, "tiled_csl"), r"tiled_csl nnz 0 disagrees"),
]


@pytest.mark.parametrize("name,d,message", STATE_DICT_CASES, ids=[c[0] for c in STATE_DICT_CASES])
def test_from_state_dict_catches(name, d, message):
    with pytest.raises(ValueError, match=message):
        SparseWeight.from_state_dict(d)


def test_from_state_dict_validate_false_skips_the_format_checks():
    d = with_meta(5, 0)
    sw = SparseWeight.from_state_dict(d, validate=False)
    assert sw.nnz == 0
    with pytest.raises(ValueError, match="nnz 0 disagrees"):
        sw.validate()


# ---- random corruption: a broken buffer raises ValueError or still decodes; never anything else ----

@given(case=weights(max_dim=150), fmt=st.sampled_from(["bitmap", "tiled_csl", "pairmap"]),
       data=st.data())
def test_random_bit_flips_never_escape_validate(case, fmt, data):
    _, w = case
    sw = compress(w, fmt)
    tensors = {k: v.clone() for k, v in sw.tensors.items()}
    name = data.draw(st.sampled_from(sorted(tensors)))
    raw = tensors[name].view(torch.uint8).view(-1)
    if raw.numel() == 0:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, raw.numel() - 1))] ^= 1 << data.draw(st.integers(0, 7))
    broken = dataclasses.replace(sw, tensors=tensors)
    try:
        broken.validate()
    except ValueError:
        return
    # Structurally sound (a value's bits or a location changed): it decodes to a matrix of the shape.
    assert broken.to_dense().shape == w.shape

