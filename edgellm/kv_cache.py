"""The KV cache: one ring buffer per layer.

A full-attention layer keeps the whole context; a sliding-window layer keeps only its window, so
its memory does not grow with the context. Keys are stored after RoPE, with the absolute
position of each slot (-1 for an empty slot); attention masks by position, so the order of the
slots in the ring does not matter.

Storage is f16 (the default, as in llama.cpp), f32 or q8_0 (`kv_type`). Attention reads an f16
cache as it is stored (and then rounds as llama.cpp does: kernels.nn.attention), a q8_0 one
dequantized to f16, an f32 one as float32. q8_0 is ggml's block format (32 values share one f16 scale: 34 bytes per 32 values), so
an 8-bit cache takes 53% of an f16 one. Keys are stored after RoPE, as llama.cpp does.

When a conversation outgrows the context, `KVCache.shift` does what llama.cpp's context shift
does: it keeps the first n_keep positions (BOS and the system prompt, which the model attends to
as "sinks"), drops the next n_discard and slides the rest down, re-rotating their keys by the
position change so that they read as if computed at their new positions.
"""

from __future__ import annotations

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.kernels import dequantize
from edgellm.kernels.ggml_types import GGMLQuantizationType
from edgellm.kernels.nn import apply_rope, rope_tables, store_f16, to_f16

KV_TYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK, Q8_0_BYTES = 32, 34  # values per block, bytes per block (f16 scale + 32 int8)


def _quantize_q8_0(rows: np.ndarray) -> np.ndarray:
    """float32 [n, dim] -> q8_0 blocks, uint8 [n, dim / 32 * 34]: ggml's reference quantizer
    (gguf.quants; imported here, so that a run with another cache type never loads the package)."""
    from gguf import quants

    return quants.quantize(rows, GGMLQuantizationType.Q8_0)


class KVStore:
    """Keys or values of one layer, [n_kv, slot, dim], held as f32, f16 or q8_0 blocks."""

    def __init__(self, n_kv_head: int, capacity: int, dim: int, kv_type: str):
        self.dim, self.kv_type = dim, kv_type
        if kv_type == "q8_0":
            if dim % Q8_0_BLOCK:
                raise EdgeLLMError(f"--kv-type q8_0 needs a head size that is a multiple of 32, not {dim}")
            self.data = np.zeros((n_kv_head, capacity, dim // Q8_0_BLOCK * Q8_0_BYTES), np.uint8)
        else:
            self.data = np.zeros((n_kv_head, capacity, dim), np.float16 if kv_type == "f16" else np.float32)

    def write(self, slots, x: np.ndarray) -> None:
        """x float32 [n_kv, len(slots), dim] into those slots (an int: that one slot)."""
        if self.kv_type == "f16" and isinstance(slots, int):  # a decode step's slot: one call
            store_f16(x[:, 0], self.data[:, slots])
            return
        if isinstance(slots, int):
            slots = slice(slots, slots + 1)
        if self.kv_type == "q8_0":
            n_kv, m, _ = x.shape
            x = _quantize_q8_0(x.reshape(n_kv * m, self.dim)).reshape(n_kv, m, -1)
        elif self.kv_type == "f16":
            x = to_f16(x)
        self.data[:, slots] = x

    def read(self, slots=slice(None)) -> np.ndarray:
        """float32 [n_kv, m, dim] of those slots (a view for f32 and a slice, else a new array)."""
        if self.kv_type == "q8_0":
            return self._dequantized(slots)
        return self.data[:, slots].astype(np.float32, copy=False)

    def view(self, slots=slice(None)) -> np.ndarray:
        """Those slots as attention takes them: float32 for f32 (a view for a slice), float16
        otherwise (q8_0 dequantized to it, so that decode attention runs as the team's f16 job;
        f16 holds a q8_0 value to 2^-11, its own steps are 1/127)."""
        if self.kv_type == "q8_0":
            return to_f16(self._dequantized(slots))
        return self.data[:, slots]

    def _dequantized(self, slots) -> np.ndarray:
        part = self.data[:, slots]
        n_kv, m, row_bytes = part.shape
        rows = np.ascontiguousarray(part).reshape(n_kv * m, row_bytes)
        return dequantize(rows, GGMLQuantizationType.Q8_0, self.dim).reshape(n_kv, m, self.dim)

    def as_stored(self, x: np.ndarray) -> np.ndarray:
        """x float32 [n_kv, m, dim] as view() would give it back once written."""
        if self.kv_type == "f32":
            return x
        if self.kv_type == "f16":
            return to_f16(x)
        n_kv, m, _ = x.shape
        rows = _quantize_q8_0(x.reshape(n_kv * m, self.dim))
        return to_f16(dequantize(rows, GGMLQuantizationType.Q8_0, self.dim).reshape(n_kv, m, self.dim))

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


class LayerKVCache:
    def __init__(self, n_kv_head: int, head_dim: int, head_dim_v: int, capacity: int, window: int,
                 kv_type: str = "f16"):
        self.capacity, self.window = capacity, window
        self.k = KVStore(n_kv_head, capacity, head_dim, kv_type)  # [n_kv, slot, hd]
        self.v = KVStore(n_kv_head, capacity, head_dim_v, kv_type)
        self.pos = np.full(capacity, -1, np.int64)  # position held by each slot
        self.lost = -1  # window layers: every position <= lost has been overwritten by the ring

    def clear(self) -> None:
        self.pos[:] = -1
        self.lost = -1

    def _store(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> None:
        if len(positions) == 1:  # a decode step: one slot, plain indexing
            slot = int(positions[0]) % self.capacity
            self.lost = max(self.lost, int(self.pos[slot]))
            self.k.write(slot, k.transpose(1, 0, 2))
            self.v.write(slot, v.transpose(1, 0, 2))
            self.pos[slot] = positions[0]
            return
        n_skip = max(0, len(positions) - self.capacity)  # a long batch keeps its tail
        if n_skip:
            self.lost = max(self.lost, int(positions[n_skip - 1]))
        positions = positions[n_skip:]
        slots = positions % self.capacity
        self.lost = max(self.lost, int(self.pos[slots].max()))
        self.k.write(slots, k[n_skip:].transpose(1, 0, 2))
        self.v.write(slots, v[n_skip:].transpose(1, 0, 2))
        self.pos[slots] = positions

    def update(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray):
        """Store the batch's k/v [n, n_kv, hd]; return (keys, values, key_positions) it attends to
        (keys and values as KVStore.view gives them).

        Writing first is safe when no new entry evicts one that a query of this batch still sees:
        always for full layers (the engine never exceeds the context), for a window layer when
        the batch is one token, and for any batch that ends before the ring's first wrap (its
        slots are empty). Once slot == position for every entry (a full layer; a window layer
        before the wrap: earlier entries are at lower positions still), a batch attends to the
        used prefix of the cache itself, keys in position order. A longer batch on a window layer
        past the wrap attends to the old entries plus the whole batch, then keeps the newest
        `capacity` of them.
        """
        n = len(positions)
        prefix = self.window == 0 or (n > 1 and int(positions[-1]) < self.capacity)
        if prefix or n == 1:
            self._store(k, v, positions)
            if prefix:  # slot == position: attend only to the used prefix
                used = int(positions[-1]) + 1
                return self.k.view(slice(0, used)), self.v.view(slice(0, used)), self.pos[:used]
            return self.k.view(), self.v.view(), self.pos
        old = np.flatnonzero(self.pos >= 0)
        keys = np.concatenate([self.k.view(old), self.k.as_stored(k.transpose(1, 0, 2))], axis=1)
        values = np.concatenate([self.v.view(old), self.v.as_stored(v.transpose(1, 0, 2))], axis=1)
        key_pos = np.concatenate([self.pos[old], positions])
        self._store(k, v, positions)
        return keys, values, key_pos

    def truncate(self, n: int) -> bool:
        """Forget positions >= n. False when a window layer's ring already overwrote a position
        that the next query (at n) would see: the cache can no longer stand for those n tokens."""
        self.pos[self.pos >= n] = -1
        return self.window == 0 or self.lost < max(0, n - self.window + 1)

    def shift(self, n_keep: int, n_discard: int, rotate_keys) -> None:
        """Drop positions [n_keep, n_keep + n_discard), move later ones down by n_discard.

        rotate_keys(k [n_kv, m, hd], delta) re-applies RoPE in place for a position change of
        delta. Entries move to the slot of their new position; kept positions stay distinct modulo
        the capacity, so no moved entry lands on one that stays.
        """
        start = n_keep + n_discard
        self.pos[(self.pos >= n_keep) & (self.pos < start)] = -1
        if self.lost >= start:
            self.lost -= n_discard
        elif self.lost >= n_keep:  # everything up to the dropped range had already been lost
            self.lost = n_keep - 1
        moved = np.flatnonzero(self.pos >= start)
        if moved.size == 0:
            return
        k = np.array(self.k.read(moved))  # [n_kv, m, hd], a copy
        v = self.v.read(moved)
        rotate_keys(k, -n_discard)
        new_pos = self.pos[moved] - n_discard
        self.pos[moved] = -1
        slots = new_pos % self.capacity
        self.k.write(slots, k)
        self.v.write(slots, v)
        self.pos[slots] = new_pos


class KVCache:
    """Per-layer caches for a context of n_ctx positions.

    swa_margin: extra slots for sliding-window layers, so that the cache can roll back that many
    tokens (a chat's /regen) and still hold each window; llama.cpp keeps n_swa + n_ubatch cells.
    """

    def __init__(self, hp, n_ctx: int, kv_type: str = "f16", swa_margin: int = 0):
        if kv_type not in KV_TYPES:
            raise EdgeLLMError(f"KV cache type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        self.hp, self.n_ctx, self.kv_type, self.swa_margin = hp, n_ctx, kv_type, swa_margin
        self.layers = []
        for il in range(hp.n_layer):
            window = hp.window(il)
            capacity = min(window + swa_margin, n_ctx) if window else n_ctx
            self.layers.append(LayerKVCache(hp.n_head_kv, hp.head_dim, hp.head_dim_v, capacity, window, kv_type))
        self.n_past = 0  # positions filled so far; the next token goes at this position
        self.epoch = 0  # counts clear()s: a chat session knows the cache is still its own

    def clear(self) -> None:
        for layer in self.layers:
            layer.clear()
        self.n_past = 0
        self.epoch += 1

    def truncate(self, n: int) -> bool:
        """Keep positions [0, n) so that evaluation continues at n; False (and the cache cleared)
        when a sliding-window layer no longer holds what position n needs."""
        n = min(n, self.n_past)
        if not all([layer.truncate(n) for layer in self.layers]):
            self.clear()
            return False
        self.n_past = n
        return True

    def shift(self, n_keep: int, n_discard: int, rope_factors=None) -> None:
        """llama.cpp's context shift: keep positions [0, n_keep), drop the next n_discard, slide
        the rest down and re-rotate their keys. rope_factors: per layer, None or the layer's
        RoPE frequency factors (llama 3.1+)."""
        if not (0 <= n_keep and 0 < n_discard and n_keep + n_discard <= self.n_past):
            raise ValueError(f"cannot drop {n_discard} after {n_keep} of {self.n_past} positions")
        hp = self.hp
        for il, layer in enumerate(self.layers):
            base, scale = hp.rope(il)
            factors = rope_factors[il] if rope_factors is not None else None

            def rotate_keys(k, delta, base=base, scale=scale, factors=factors):
                # RoPE at p then at delta is RoPE at p + delta: rotating by delta moves the key.
                cos, sin = rope_tables(np.array([delta]), hp.n_rot, base, scale, factors)  # [1, n_rot/2]
                apply_rope(k, cos, sin, hp.rope_type)

            layer.shift(n_keep, n_discard, rotate_keys)
        self.n_past -= n_discard

    @property
    def nbytes(self) -> int:
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)
