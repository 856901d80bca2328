"""CornerNet's associative embedding with 1-dim embeddings (paper Table 4, "AE 1-dim").

Each corner predicts a scalar embedding from the (adapted) corner feature; pull/push losses with
weights 0.1/0.1 and margin 1; a pair is kept when |e_tl - e_br| <= 0.5 and scored by the
arithmetic mean of its corner scores. All logic lives in ``cnet.matching.embedding``.
"""

from __future__ import annotations

from cnet.matching.embedding import AssociativeEmbedding


class AE1D(AssociativeEmbedding):
    """Associative embedding, D = 1 (CornerNet). Arguments as ``AssociativeEmbedding``."""

    dim = 1
