"""The fusion sort kernel under Triton's interpreter: the instance order (and so the tie order)
is torch.argsort(-scores) on the CPU, std::sort's introsort including its heap-sort fallback
(the runtime's emulation, runtime/torch_sort.py, checked against torch itself). How the checks
run: tests/runtime/gpu/interpreter_harness.py.
"""
from __future__ import annotations

import math

import numpy as np

from pfpn.runtime.contract import FusionConfig
from pfpn.runtime.gpu.device_fusion import SPECS_BY_NAME, KernelConfig
from pfpn.runtime.torch_sort import fusion_order, std_sort  # the numpy runtime's emulation of torch's CPU sort

from tests.runtime.gpu.interpreter_harness import (GEOM, IN_CHILD, S, T, interpreter_tests, make_inputs, run_case)

if IN_CHILD:
    import torch

    from pfpn.runtime.gpu import kernels as K


child_results, test_interpreted = interpreter_tests(__file__)


def check_tied_scores_follow_torch_unstable_sort():
    # 20 overlapping detections with only 3 distinct scores: the instance order (and so which
    # one is skipped) follows torch.argsort(-scores) on the CPU (std::sort), not a stable sort
    rng = np.random.default_rng(11)
    d = 24
    n = 20
    scores = np.array([0.9, 0.8, 0.8, 0.9, 0.7] * 4, np.float32)
    boxes = []
    for i in range(n):
        x, y = rng.uniform(0, 50), rng.uniform(0, 35)
        boxes.append([x, y, x + rng.uniform(8, 30), y + rng.uniform(8, 25)])
    probs = rng.random((n, 28, 28)).astype(np.float32) * 0.6 + 0.2
    cfg = KernelConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=d,
                       fusion=FusionConfig(stuff_area_limit=50))
    inputs = make_inputs(d=d, boxes=boxes, scores=scores, labels=rng.integers(0, T, n), probs=probs,
                         logits=rng.standard_normal((S + 1, *GEOM.logits)).astype(np.float32))
    run_case(inputs, cfg)
    order = torch.argsort(-torch.from_numpy(scores)).tolist()
    assert order != sorted(range(n), key=lambda i: -scores[i])  # the case really exercises tie order


def _sort_order(scores: np.ndarray, n: int) -> list[int]:
    d = len(scores)
    order = torch.full((d,), -1, dtype=torch.int32)
    K.fusion_sort_kernel[(1,)](torch.from_numpy(scores.astype(np.float32)), torch.tensor([n]), order, d,
                               **SPECS_BY_NAME["fusion_sort_kernel"].constexprs)
    assert (order[n:] == -1).all()
    return order[:n].tolist()


def check_sort_kernel_matches_torch_argsort():
    rng = np.random.default_rng(3)
    cases = [np.array([0.5, 0.7, 0.7, 0.6], np.float32), np.zeros(100, np.float32), np.linspace(1, 0, 100, dtype=np.float32)]
    for _ in range(2):
        d = int(rng.integers(17, 101))
        cases.append((rng.integers(0, int(rng.choice([2, 3, 8])), d) / 8).astype(np.float32))
        cases.append(np.sort(cases[-1])[::-1].copy())  # descending with ties, as the network gives them
    cases.append(np.array([np.nan, 0.5, np.nan, 0.7] * 5, np.float32))  # NaN sorts like torch
    for s in cases:
        n = len(s)
        assert _sort_order(s, n) == torch.argsort(-torch.from_numpy(s)).tolist()
    s = cases[4]
    assert _sort_order(s, 10) == torch.argsort(-torch.from_numpy(s[:10])).tolist()  # n < D
    assert _sort_order(s, 0) == []


def torch_cpu_argsort_desc(scores: np.ndarray) -> tuple[list[int], bool]:
    """torch.argsort(-scores) on the CPU, emulated with the runtime's std::sort (order, whether
    heap-sort ran); checked against torch itself below."""
    keys = (-scores.astype(np.float32)).tolist()

    def less(i, j):
        a, b = keys[i], keys[j]
        return (not math.isnan(a) and math.isnan(b)) or a < b

    return std_sort(list(range(len(keys))), less)


def median_of_3_killer(n: int) -> np.ndarray:
    """Scores on which the introsort exhausts its depth limit and heap-sorts: McIlroy's
    adversary ("A killer adversary for quicksort", 1999) run against the emulation."""
    gas = n
    val = [gas] * n
    state = {"solid": 0, "candidate": -1}

    def less(x, y):
        if val[x] == gas and val[y] == gas:
            z = x if x == state["candidate"] else y
            val[z] = state["solid"]
            state["solid"] += 1
        if val[x] == gas:
            state["candidate"] = x
        elif val[y] == gas:
            state["candidate"] = y
        return val[x] < val[y]

    std_sort(list(range(n)), less)
    return np.array(val, np.float32)  # sort keys (= -scores)


def check_sort_emulation_matches_torch():
    rng = np.random.default_rng(1)
    for _ in range(300):
        d = int(rng.integers(1, 101))
        s = (rng.integers(0, int(rng.choice([2, 3, 6, 50])), d) / 8).astype(np.float32)
        if rng.random() < 0.5:
            s = np.sort(s)[::-1].copy()
        assert torch_cpu_argsort_desc(s)[0] == torch.argsort(-torch.from_numpy(s)).tolist()


def check_sort_kernel_heap_sort_fallback():
    keys = median_of_3_killer(100)
    for scores in ((-keys / 100).astype(np.float32),
                   (-np.floor(keys / 2) / 100).astype(np.float32)):  # 51 distinct values: ties
        order, heap_sorted = torch_cpu_argsort_desc(scores)
        assert heap_sorted, "the adversarial input should reach the introsort depth limit"
        assert order == torch.argsort(-torch.from_numpy(scores)).tolist()
        assert _sort_order(scores, 100) == order
        assert fusion_order(scores).tolist() == order  # the runtime's (key, index) form of it
    stable = sorted(range(100), key=lambda i: -scores[i])
    assert order != stable  # heap sort is not stable: the tie order really comes from it
