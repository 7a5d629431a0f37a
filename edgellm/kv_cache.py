"""The KV cache: one ring buffer per layer.

A full-attention layer keeps the whole context; a sliding-window layer keeps only its window, so
its memory does not grow with the context. Keys are stored after RoPE, with the absolute
position of each slot (-1 for an empty slot); attention masks by position, so the order of the
slots in the ring does not matter.
"""

from __future__ import annotations

import numpy as np


class LayerKVCache:
    def __init__(self, n_kv_head: int, head_dim: int, head_dim_v: int, capacity: int, window: int):
        self.capacity, self.window = capacity, window
        self.k = np.zeros((n_kv_head, capacity, head_dim), np.float32)  # [n_kv, slot, hd]
        self.v = np.zeros((n_kv_head, capacity, head_dim_v), np.float32)
        self.pos = np.full(capacity, -1, np.int64)  # position held by each slot

    def clear(self) -> None:
        self.pos[:] = -1

    def _store(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> None:
        keep = slice(max(0, len(positions) - self.capacity), None)  # a long batch keeps its tail
        slots = positions[keep] % self.capacity
        self.k[:, slots] = k[keep].transpose(1, 0, 2)
        self.v[:, slots] = v[keep].transpose(1, 0, 2)
        self.pos[slots] = positions[keep]

    def update(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray):
        """Store the batch's k/v [n, n_kv, hd]; return (keys, values, key_positions) it attends to.

        Writing first is safe when no new entry evicts one that a query of this batch still sees:
        always for full layers (the engine never exceeds the context) and for a window layer when
        the batch is one token. A longer batch on a window layer attends to the old entries plus
        the whole batch, then keeps the newest `capacity` of them.
        """
        n = len(positions)
        if self.window == 0 or n == 1:
            self._store(k, v, positions)
            if self.window == 0:  # slots fill from 0 upwards: attend only to the used prefix
                used = int(positions[-1]) + 1
                return self.k[:, :used], self.v[:, :used], self.pos[:used]
            return self.k, self.v, self.pos
        old = self.pos >= 0
        keys = np.concatenate([self.k[:, old], k.transpose(1, 0, 2)], axis=1)
        values = np.concatenate([self.v[:, old], v.transpose(1, 0, 2)], axis=1)
        key_pos = np.concatenate([self.pos[old], positions])
        self._store(k, v, positions)
        return keys, values, key_pos


class KVCache:
    """Per-layer caches for a context of n_ctx positions."""

    def __init__(self, hp, n_ctx: int):
        self.n_ctx = n_ctx
        self.layers = []
        for il in range(hp.n_layer):
            window = hp.window(il)
            capacity = min(window, n_ctx) if window else n_ctx
            self.layers.append(LayerKVCache(hp.n_head_kv, hp.head_dim, hp.head_dim_v, capacity, window))
        self.n_past = 0  # positions filled so far; the next token goes at this position

    def clear(self) -> None:
        for layer in self.layers:
            layer.clear()
        self.n_past = 0

    @property
    def nbytes(self) -> int:
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)
