import math
import random

import pytest
import torch

from cnet.nms import soft_nms


def _iou_ref(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _soft_nms_ref(boxes, scores, labels, sigma, min_score, max_dets):
    """One box at a time, one class at a time, in plain python."""
    kept = []  # (score, box, label)
    for cls in sorted(set(labels)):
        alive = [[s, b] for b, s, l in zip(boxes, scores, labels) if l == cls and s >= min_score]
        while alive:
            best = max(range(len(alive)), key=lambda i: alive[i][0])
            s, b = alive.pop(best)
            kept.append((s, b, cls))
            for item in alive:
                item[0] *= math.exp(-(_iou_ref(b, item[1]) ** 2) / sigma)
            alive = [item for item in alive if item[0] >= min_score]
    kept.sort(key=lambda t: -t[0])
    return kept[:max_dets]


def _random_case(n: int, num_classes: int, seed: int):
    rng = random.Random(seed)
    centres = [(rng.uniform(20, 200), rng.uniform(20, 200)) for _ in range(6)]
    boxes, scores, labels = [], [], []
    for _ in range(n):
        cx, cy = rng.choice(centres)  # clustered, so boxes overlap heavily
        cx, cy = cx + rng.gauss(0, 6), cy + rng.gauss(0, 6)
        w, h = rng.uniform(10, 60), rng.uniform(10, 60)
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        scores.append(rng.uniform(0.0, 1.0))
        labels.append(rng.randrange(num_classes))
    return boxes, scores, labels


def _run(boxes, scores, labels, **kw):
    out = soft_nms(
        torch.tensor(boxes, dtype=torch.float64),
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(labels, dtype=torch.int64),
        **kw,
    )
    return [t.tolist() for t in out]


@pytest.mark.parametrize(
    "n,num_classes,sigma,min_score,max_dets,seed",
    [
        (60, 4, 0.5, 1e-3, 100, 0),  # everything fits: all survivors returned
        (150, 5, 0.5, 1e-3, 20, 1),  # max_dets truncates (and triggers the early stop)
        (80, 3, 0.05, 0.2, 100, 2),  # strong decay + high min_score: many boxes dropped
        (40, 1, 0.5, 1e-3, 100, 3),  # single class
    ],
)
def test_soft_nms_matches_reference(n, num_classes, sigma, min_score, max_dets, seed):
    boxes, scores, labels = _random_case(n, num_classes, seed)
    ref = _soft_nms_ref(boxes, scores, labels, sigma, min_score, max_dets)
    out_boxes, out_scores, out_labels = _run(boxes, scores, labels, sigma=sigma, min_score=min_score, max_dets=max_dets)

    assert len(out_scores) == len(ref) <= max_dets
    assert out_scores == sorted(out_scores, reverse=True)
    for (rs, rb, rl), s, b, l in zip(ref, out_scores, out_boxes, out_labels):
        assert s == pytest.approx(rs, rel=1e-9)
        assert b == pytest.approx(rb)
        assert l == rl
    if min_score == 0.2:
        assert len(ref) < sum(s >= min_score for s in scores)  # dropping really happened


def test_soft_nms_two_boxes_known_decay():
    # IoU([0,0,10,10], [5,0,15,10]) = 50 / 150 = 1/3 with no +1 offset.
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [5, 0, 15, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 1])
    _b, s, l = soft_nms(boxes, scores, labels, sigma=0.5)
    expected = sorted([0.9, 0.8 * math.exp(-((1 / 3) ** 2) / 0.5), 0.7], reverse=True)
    assert s.tolist() == pytest.approx(expected, rel=1e-6)
    # The class-1 box overlaps the class-0 boxes but is not decayed: classes are independent.
    assert (l == 1).sum() == 1 and s[l == 1].item() == pytest.approx(0.7)


def test_soft_nms_drops_below_min_score_and_empty_input():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.5, 0.0005])
    labels = torch.tensor([2, 2, 2])
    _, s, _ = soft_nms(boxes, scores, labels, sigma=0.5, min_score=0.1)
    # Identical box decays to 0.5 * e^-2 = 0.068 < 0.1; the low initial score never enters.
    assert s.tolist() == pytest.approx([0.9])

    # Tiny sigma: exp(-IoU^2 / sigma) underflows to 0 in float32; the killed middle box must stay
    # dead (not turn into NaN) when the disjoint third box is picked next.
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]])
    _, s, _ = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.int64), sigma=1e-3)
    assert s.tolist() == pytest.approx([0.9, 0.7])

    b, s, l = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert b.shape == (0, 4) and s.shape == (0,) and l.shape == (0,) and l.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_soft_nms_cuda_matches_cpu():
    boxes, scores, labels = _random_case(500, 20, 11)
    args = (torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels))
    cpu = soft_nms(*args)
    gpu = soft_nms(*(t.cuda() for t in args))
    assert all(g.is_cuda for g in gpu)
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c)


# --- bit-for-bit identity with the implementation before the [5, C, Nmax] planes and the running
# early-stop buffer (cnet/nms.py at 58c5094), kept as a reference


def _group_by_class_before(labels):
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    cls_idx = torch.repeat_interleave(torch.arange(counts.numel(), device=labels.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel(), device=labels.device) - starts[cls_idx]
    return order, cls_idx, rank, int(counts.max())


def _soft_nms_before(boxes, scores, labels, sigma=0.5, min_score=1e-3, max_dets=100):
    valid = scores >= min_score
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    if scores.numel() == 0 or max_dets <= 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), labels.new_zeros((0,))
    order, cls_idx, rank, n_max = _group_by_class_before(labels)
    num_cls = int(cls_idx[-1]) + 1
    dtype = torch.promote_types(boxes.dtype, torch.float32)
    pad_geo = torch.zeros((num_cls, n_max, 5), dtype=dtype)
    sorted_boxes = boxes[order].to(dtype)
    pad_geo[cls_idx, rank, :4] = sorted_boxes
    pad_geo[cls_idx, rank, 4] = (sorted_boxes[:, 2] - sorted_boxes[:, 0]).clamp(min=0) * (
        sorted_boxes[:, 3] - sorted_boxes[:, 1]
    ).clamp(min=0)
    x1, y1, x2, y2, area = pad_geo.unbind(-1)
    pad_scores = torch.full((num_cls, n_max), float("-inf"), dtype=dtype)
    pad_scores[cls_idx, rank] = scores[order].to(dtype)
    pad_src = torch.full((num_cls, n_max), -1, dtype=torch.long)
    pad_src[cls_idx, rank] = order
    neg_inf = torch.tensor(float("-inf"), dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    pick_scores, pick_src = [], []
    for it in range(n_max):
        top_score, top_col = pad_scores.max(dim=1)
        col = top_col[:, None]
        pick_scores.append(top_score)
        pick_src.append(pad_src.gather(1, col)[:, 0])
        pad_scores.scatter_(1, col, float("-inf"))
        px1, py1, px2, py2, parea = pad_geo.gather(1, col[:, :, None].expand(-1, 1, 5)).unbind(-1)
        iw = (torch.minimum(x2, px2) - torch.maximum(x1, px1)).clamp_(min=0)
        ih = (torch.minimum(y2, py2) - torch.maximum(y1, py1)).clamp_(min=0)
        inter = iw * ih
        iou = inter / (area + parea - inter).clamp_(min=tiny)
        decayed = pad_scores * torch.exp(iou.square_().mul_(-1.0 / sigma))
        pad_scores = torch.where(decayed >= min_score, decayed, neg_inf)
        if it % 4 == 3:
            picked = torch.cat(pick_scores + [neg_inf.expand(max_dets)])
            kth = torch.topk(picked, max_dets).values[-1]
            if bool(kth >= pad_scores.max()):
                break
    all_scores = torch.cat(pick_scores)
    all_src = torch.cat(pick_src)
    keep = all_scores > neg_inf
    all_scores, all_src = all_scores[keep], all_src[keep]
    top = torch.topk(all_scores, min(max_dets, all_scores.numel()))
    src = all_src[top.indices]
    return boxes[src], top.values.to(scores.dtype), labels[src]


def _tensor_case(n: int, num_classes: int, seed: int, dtype: torch.dtype, ties: bool):
    boxes, scores, labels = _random_case(n, num_classes, seed)
    boxes, scores = torch.tensor(boxes, dtype=dtype), torch.tensor(scores, dtype=dtype)
    labels = torch.tensor(labels, dtype=torch.int64) * 3  # classes 1, 2, 4, 5, ... stay empty
    if ties:  # equal scores within and across classes, duplicated and degenerate boxes
        scores = (scores * 8).round() / 8
        boxes[1::7] = boxes[::7][: len(boxes[1::7])]
        boxes[::11, 2] = boxes[::11, 0]
    return boxes, scores, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(
    "n,num_classes,sigma,min_score,max_dets",
    [
        (1000, 80, 0.5, 1e-3, 100),
        (1000, 6, 0.5, 1e-3, 100),
        (400, 2, 0.05, 0.2, 30),
        (300, 40, 2.0, 1e-3, 500),
        (1, 1, 0.5, 1e-3, 100),
    ],
)
def test_soft_nms_equals_the_previous_implementation_bit_for_bit(
    n, num_classes, sigma, min_score, max_dets, dtype, ties
):
    boxes, scores, labels = _tensor_case(n, num_classes, n + num_classes, dtype, ties)
    new = soft_nms(boxes, scores, labels, sigma=sigma, min_score=min_score, max_dets=max_dets)
    old = _soft_nms_before(boxes, scores, labels, sigma=sigma, min_score=min_score, max_dets=max_dets)
    for a, b in zip(new, old):
        assert a.dtype == b.dtype and torch.equal(a, b)
