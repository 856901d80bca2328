"""The corner-keypoint detector: backbone -> per-level corner head -> dense maps (no losses).

``model(images) -> Outputs``; the criterion and the post-processor consume the maps. What pairs
corners (``matching``), how corner features are adapted (``adaption``) and the second-stage
instance-mask head on the last stack (``mask_head``) are pluggable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from torch import Tensor, nn

from cnet.adaption.base import Adaption
from cnet.corner_pool import CornerPool
from cnet.decode import ProposalDecoder
from cnet.mask_head.base import MaskHead
from cnet.mask_head.none import NoMask
from cnet.matching.base import Matching
from cnet.parts import CornerFeatures, Part, init_heatmap_bias, kp_layer
from cnet.types import Outputs


class CornerHead(nn.Module):
    """Corner pooling, heatmaps, offsets, adaption and matching maps of one hourglass stack."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pool_channels: int,
        matching: Matching,
        adaption: Adaption,
    ) -> None:
        super().__init__()
        self.tl_pool = CornerPool(in_channels, pool_channels, ("top", "left"))
        self.br_pool = CornerPool(in_channels, pool_channels, ("bottom", "right"))
        self.tl_heat = kp_layer(in_channels, num_classes)
        self.br_heat = kp_layer(in_channels, num_classes)
        self.tl_off = kp_layer(in_channels, 2)
        self.br_off = kp_layer(in_channels, 2)
        init_heatmap_bias(self.tl_heat)
        init_heatmap_bias(self.br_heat)
        self.adaption = adaption
        self.matching = matching

    def forward(self, feat: Tensor) -> dict[str, Tensor]:
        tl_pool, br_pool = self.tl_pool(feat), self.br_pool(feat)  # [B, C, H, W] each
        out = {
            "tl_heat": self.tl_heat(tl_pool),
            "br_heat": self.br_heat(br_pool),
            "tl_off": self.tl_off(tl_pool),
            "br_off": self.br_off(br_pool),
        }
        tl, br, adapted = self.adaption(tl_pool, br_pool)
        out |= adapted
        out |= self.matching(CornerFeatures(feat, tl_pool, br_pool, tl, br))
        return out


class CornerDetector(nn.Module):
    """CentripetalNet and its ablations: an hourglass with one unshared corner head per stack.

    Args:
        backbone: module mapping [B, 3, H, W] to a list of per-stack features [B, C, H/4, W/4];
            it must expose ``out_channels`` and ``num_stacks``.
        num_classes: number of object classes (taken from the dataset).
        matching: factory ``(in_channels, num_classes) -> Matching`` (a Hydra partial).
        adaption: factory ``(in_channels) -> Adaption`` (a Hydra partial).
        pool_channels: width of the corner-pool branches (128 in CornerNet).
        mask_head: factory ``(in_channels, num_classes, decoder) -> MaskHead`` on the last stack's
            feature (a Hydra partial; None: no mask head); ``decoder`` is a
            :class:`~cnet.decode.ProposalDecoder` of the last stack's matching.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        matching: Callable[..., Matching],
        adaption: Callable[..., Adaption],
        pool_channels: int = 128,
        mask_head: Callable[..., MaskHead] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        channels = int(cast(int, backbone.out_channels))
        heads = []
        for _ in range(int(cast(int, backbone.num_stacks))):
            m = matching(in_channels=channels, num_classes=num_classes)
            a = adaption(in_channels=channels)
            if a.changes_features and not m.accepts_adapted_features:
                raise ValueError(
                    f"adaption={type(a).__name__} adapts the corner features but "
                    f"matching={type(m).__name__} does not predict from them; use adaption=none"
                )
            heads.append(CornerHead(channels, num_classes, pool_channels, m, a))
        self.heads = nn.ModuleList(heads)
        # built after the heads: the corner heads' initialisation (and RNG use) is the same without it
        factory = mask_head or NoMask
        self.mask_head = factory(in_channels=channels, num_classes=num_classes, decoder=ProposalDecoder(self.matching))

    @property
    def matching(self) -> Matching:
        """The final level's matching strategy (for target encoding, losses and pairing)."""
        return cast(CornerHead, self.heads[-1]).matching

    @property
    def adaption(self) -> Adaption:
        return cast(CornerHead, self.heads[-1]).adaption

    @property
    def parts(self) -> dict[str, Part]:
        """The pluggable parts of the final level, in the order the criterion calls them."""
        return {"adaption": self.adaption, "matching": self.matching, "mask_head": self.mask_head}

    @property
    def uses_masks(self) -> bool:
        """Whether training needs ground-truth instance masks (a part, e.g. a mask head, asks for them)."""
        return any(part.uses_masks for part in self.parts.values())

    def forward(self, images: Tensor) -> Outputs:
        """images [B, 3, H, W] -> Outputs; eval mode computes only the last stack's head.

        In training the mask head adds its maps to the last level. It trains on the detector's own
        proposals (paper §3.3), so decoding has to happen inside the training forward; the head
        does it with the :class:`~cnet.decode.ProposalDecoder` it was built with, and only when it
        wants proposals (never for ``mask_head=none``, nor before its ``start_epoch``). The forward
        itself only routes maps: soft-NMS, test-time views and unpadding stay in the post-processor.
        """
        feats = self.backbone(images)
        if self.training:
            levels = [head(f) for head, f in zip(self.heads, feats)]
        else:
            levels = [self.heads[-1](feats[-1])]
        out = Outputs(levels, (int(images.shape[-2]), int(images.shape[-1])), features=feats[-1])
        if self.training:
            levels[-1] |= self.mask_head(feats[-1], levels[-1], out.grid)
        return out
