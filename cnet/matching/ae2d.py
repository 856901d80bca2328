"""Associative embedding with 2-dim embeddings (paper Table 4, "AE 2-dim").

The paper's fair comparison with the 2-dim centripetal shift: the same head capacity, but the
corner predicts a 2-d embedding instead of a 2-d vector to the centre. The pairing test uses the
Euclidean (L2) distance ||e_tl - e_br||_2 <= 0.5 because that is the metric the push loss
separates object means in (``ae_pull_push`` uses L2 for D > 1): a test in another metric (e.g.
per-axis |.|) would accept pairs the loss never learned to keep apart. For D = 1, L2 reduces to
CornerNet's |e_tl - e_br|, so ``ae1d`` and ``ae2d`` differ only in D.
"""

from __future__ import annotations

from cnet.matching.embedding import AssociativeEmbedding


class AE2D(AssociativeEmbedding):
    """Associative embedding, D = 2. Arguments as ``AssociativeEmbedding``."""

    dim = 2
