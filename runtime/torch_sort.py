"""torch's CPU sort order in numpy: the panoptic fusion takes instances in
``torch.argsort(-scores)`` order, an unstable sort. With exact score ties the order is libstdc++'s
introsort (what torch's CPU sort calls), emulated here so that tied instances come in the same
order as the PyTorch reference's."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pfpn.runtime.float32_ops import F32


def fusion_order(scores: np.ndarray) -> np.ndarray:
    """The reference's instance order: ``torch.argsort(-scores)`` on the CPU (unstable)."""
    neg = -np.asarray(scores, dtype=F32)
    if neg.size < 2 or len(np.unique(neg)) == neg.size:  # no ties (NaNs collapse in unique)
        return np.argsort(neg, kind="stable")
    return np.array(_std_sort_indices(neg.tolist()), dtype=np.int64)


def _std_sort_indices(keys: list[float]) -> list[int]:
    """Indices of ``keys`` in the order libstdc++'s ``std::sort`` (introsort) puts (key, index)
    pairs with torch's ascending comparator (NaN last). Torch's CPU sort uses it when
    ``stable=False``; equal keys come out in its deterministic but non-stable order."""

    def less(p, q) -> bool:
        x, y = p[0], q[0]
        return (x == x and y != y) or x < y

    ordered, _ = std_sort([(k, i) for i, k in enumerate(keys)], less)
    return [i for _, i in ordered]


def std_sort(items: list, less: Callable[[Any, Any], bool]) -> tuple[list, bool]:
    """libstdc++ (GCC 13) ``std::sort`` of ``items`` with the comparator ``less``: introsort
    (threshold 16, depth 2 * floor(log2 n), median-of-3 pivot moved to the front, unguarded
    partition), heap-sort fallback at depth 0, final insertion sort. -> (sorted copy, whether the
    heap-sort fallback ran)."""
    a = list(items)
    n = len(a)
    heap_sorted = False

    def unguarded_linear_insert(last: int) -> None:
        val = a[last]
        nxt = last - 1
        while less(val, a[nxt]):
            a[last] = a[nxt]
            last = nxt
            nxt -= 1
        a[last] = val

    def insertion_sort(first: int, last: int) -> None:
        for i in range(first + 1, last):
            val = a[i]
            if less(val, a[first]):
                a[first + 1:i + 1] = a[first:i]
                a[first] = val
            else:
                unguarded_linear_insert(i)

    def move_median_to_first(result: int, x: int, y: int, z: int) -> None:
        if less(a[x], a[y]):
            m = y if less(a[y], a[z]) else (z if less(a[x], a[z]) else x)
        elif less(a[x], a[z]):
            m = x
        elif less(a[y], a[z]):
            m = z
        else:
            m = y
        a[result], a[m] = a[m], a[result]

    def unguarded_partition(first: int, last: int, pivot: int) -> int:
        while True:
            while less(a[first], a[pivot]):
                first += 1
            last -= 1
            while less(a[pivot], a[last]):
                last -= 1
            if not first < last:
                return first
            a[first], a[last] = a[last], a[first]
            first += 1

    def adjust_heap(first: int, hole: int, length: int, value) -> None:
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if less(a[first + child], a[first + child - 1]):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if (length & 1) == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(a[first + parent], value):
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = value

    def heap_sort(first: int, last: int) -> None:  # std::__partial_sort(first, last, last)
        nonlocal heap_sorted
        heap_sorted = True
        length = last - first
        if length >= 2:
            parent = (length - 2) // 2
            while True:
                adjust_heap(first, parent, length, a[first + parent])
                if parent == 0:
                    break
                parent -= 1
        while last - first > 1:
            last -= 1
            value = a[last]
            a[last] = a[first]
            adjust_heap(first, 0, last - first, value)

    def introsort_loop(first: int, last: int, depth: int) -> None:
        while last - first > 16:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            mid = first + (last - first) // 2
            move_median_to_first(first, first + 1, mid, last - 1)
            cut = unguarded_partition(first + 1, last, first)
            introsort_loop(cut, last, depth)
            last = cut

    if n > 1:
        introsort_loop(0, n, 2 * (n.bit_length() - 1))
        if n > 16:
            insertion_sort(0, 16)
            for i in range(16, n):
                unguarded_linear_insert(i)
        else:
            insertion_sort(0, n)
    return a, heap_sorted
