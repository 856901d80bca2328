"""The curated semantic mutations ``python tests/mutation/run.py`` plants one at a time.

Each is a small, plausible wiring mistake: ``old`` must occur exactly once in ``file`` (checked by
tests/mutation/test_mutants.py, so a refactor that moves the code fails loudly instead of letting
the list rot), ``new`` replaces it, and ``tests`` are run first (the whole fast suite only if they
pass). Every component of the package has at least one entry.
"""

from __future__ import annotations

from mutant import Mutant
from mutants_runtime import RUNTIME_MUTANTS

__all__ = ["MUTANTS", "Mutant"]

MODEL_MUTANTS: list[Mutant] = [
    # --- data transforms
    Mutant(
        "train_flip_keeps_x_order",
        "data transforms",
        "cnet/data/transforms.py",
        "torch.stack([s - gt_boxes[:, 2], gt_boxes[:, 1], s - gt_boxes[:, 0], gt_boxes[:, 3]], 1)",
        "torch.stack([s - gt_boxes[:, 0], gt_boxes[:, 1], s - gt_boxes[:, 2], gt_boxes[:, 3]], 1)",
        ("tests/data/test_transforms.py",),
    ),
    Mutant(
        "test_pad_border_swapped",
        "data transforms",
        "cnet/data/transforms.py",
        "top, left = in_h // 2 - h // 2, in_w // 2 - w // 2",
        "left, top = in_h // 2 - h // 2, in_w // 2 - w // 2",
        ("tests/data/test_transforms.py",),
    ),
    Mutant(
        "hue_shift_left_negative",  # OpenCV's HSV2RGB does not wrap H below 0
        "data transforms",
        "cnet/data/photometric.py",
        "hue = 0.0 if p.hue is None else (p.hue if p.hue >= 0 else p.hue + 360)",
        "hue = 0.0 if p.hue is None else p.hue",
        ("tests/data/test_photometric.py",),
    ),
    Mutant(
        "channel_swap_fill_not_inverted",
        "data transforms",
        "cnet/data/transforms.py",
        "fill[c] = float(self._mean_np[i])",
        "fill[i] = float(self._mean_np[i])",
        ("tests/data/test_transform_equivalence.py",),
    ),
    # --- targets
    Mutant(
        "corner_cell_rounds",
        "targets",
        "cnet/targets.py",
        "tl_int = tl.long().clamp(min=0).minimum(limit)",
        "tl_int = tl.round().long().clamp(min=0).minimum(limit)",
        ("tests/test_targets.py",),
    ),
    Mutant(
        "gaussian_radius_h_w_swapped_for_br",
        "targets",
        "cnet/targets.py",
        "draw_gaussian(br_heat[i, c], bx, by, radius)",
        "draw_gaussian(br_heat[i, c], by, bx, radius)",
        ("tests/test_targets.py",),
    ),
    Mutant(
        "gaussian_radius_from_input_pixels",  # the box size in input pixels, not output cells
        "targets",
        "cnet/targets.py",
        "size = (p.br - p.tl).ceil()",
        "size = (gt.boxes[:, 2:] - gt.boxes[:, :2]).ceil()",
        ("tests/test_targets.py",),
    ),
    Mutant(
        "corner_cell_size_x_y_swapped",  # invisible on square grids
        "targets",
        "cnet/targets.py",
        "scale = gt.boxes.new_tensor([1 / grid.ratio_x, 1 / grid.ratio_y])",
        "scale = gt.boxes.new_tensor([1 / grid.ratio_y, 1 / grid.ratio_x])",
        ("tests/test_targets.py",),
    ),
    # --- matching strategies
    Mutant(
        "ae_threshold_inverted",
        "matching: ae1d/ae2d",
        "cnet/matching/embedding.py",
        "Matching.geometric_validity(tl, br) & (dist <= threshold), dist",
        "Matching.geometric_validity(tl, br) & (dist >= threshold), dist",
        ("tests/matching/test_embedding.py",),
    ),
    Mutant(
        "ae2d_distance_l1",
        "matching: ae2d",
        "cnet/matching/embedding.py",
        "return (tl_emb[:, :, None, :] - br_emb[:, None, :, :]).pow(2).sum(-1).sqrt()",
        "return (tl_emb[:, :, None, :] - br_emb[:, None, :, :]).abs().sum(-1)",
        ("tests/matching/test_embedding.py",),
    ),
    Mutant(
        "ae_pull_push_averaged_over_images",  # CornerNet/mmdetection sum over one process's images
        "matching: ae1d/ae2d",
        "cnet/matching/embedding.py",
        "return torch.stack(pulls).sum(), torch.stack(pushes).sum()",
        "return torch.stack(pulls).mean(), torch.stack(pushes).mean()",
        ("tests/matching/test_embedding.py",),
    ),
    Mutant(
        "center_heatmap_n_switch_inverted",
        "matching: center_heatmap",
        "cnet/matching/center_heatmap.py",
        "n = torch.where(area <= area_threshold, n_small, n_large)",
        "n = torch.where(area <= area_threshold, n_large, n_small)",
        ("tests/matching/test_center_heatmap.py",),
    ),
    Mutant(
        "center_regression_br_sign",
        "matching: center_regression",
        "cnet/matching/center_regression.py",
        "cell_xy(br.inds, width, br_cr.dtype) - br_cr",
        "cell_xy(br.inds, width, br_cr.dtype) + br_cr",
        ("tests/matching/test_center_regression.py",),
    ),
    Mutant(
        "centripetal_no_eq5_weight",
        "matching: centripetal",
        "cnet/matching/centripetal.py",
        "scores = scores * torch.exp(-ratio)",
        "scores = scores * 1.0",
        ("tests/matching/test_centripetal.py",),
    ),
    Mutant(
        "centripetal_mu_switch_inverted",
        "matching: centripetal",
        "cnet/matching/centripetal.py",
        "mu = torch.where((w * h).abs() > area_threshold, mu_large, mu_small)",
        "mu = torch.where((w * h).abs() > area_threshold, mu_small, mu_large)",
        ("tests/matching/test_centripetal.py",),
    ),
    Mutant(
        "centripetal_region_not_strict",
        "matching: centripetal",
        "cnet/matching/centripetal.py",
        "(tcx > rx1) & (tcx < rx2)",
        "(tcx >= rx1) & (tcx <= rx2)",
        ("tests/matching/test_centripetal.py",),
    ),
    Mutant(
        "centripetal_mmdet_rule_inverted",
        "matching: centripetal",
        "cnet/matching/centripetal.py",
        "valid &= ratio <= self.max_center_ratio",
        "valid &= ratio >= self.max_center_ratio",
        ("tests/matching/test_centripetal.py",),
    ),
    Mutant(
        "centripetal_mmdet_clamp_after_pairing",
        "matching: centripetal_mmdet",
        "cnet/matching/centripetal_mmdet.py",
        "    return px.clamp(min=0.0)",
        "    return px",
        ("tests/matching/test_centripetal_mmdet.py",),
    ),
    Mutant(
        "centripetal_mmdet_border_forgotten",
        "matching: centripetal_mmdet",
        "cnet/matching/centripetal_mmdet.py",
        "    if grid.origin is not None:",
        "    if False:",
        ("tests/matching/test_centripetal_mmdet.py",),
    ),
    Mutant(
        "tta_view_origin_unmapped",
        "TTA",
        "cnet/predictor.py",
        "v.apply_boxes(frames, size)[:, :2] for v in views",
        "frames[:, :2] for v in views",
        ("tests/matching/test_centripetal_mmdet.py",),
    ),
    Mutant(
        "pair_y_order_dropped",
        "matching: all (base)",
        "cnet/matching/base.py",
        "& (tl.ys[:, :, None] < br.ys[:, None, :])",
        "& (tl.ys[:, :, None] == tl.ys[:, :, None])",
        ("tests/matching/test_embedding.py",),
    ),
    # --- adaption modules
    Mutant(
        "none_swaps_corners",
        "adaption: none",
        "cnet/adaption/none.py",
        "return tl_pool, br_pool, {}",
        "return br_pool, tl_pool, {}",
        ("tests/adaption/test_adaption_contract.py",),
    ),
    Mutant(
        "cross_star_offset_not_detached",
        "adaption: cross_star",
        "cnet/adaption/cross_star.py",
        "offset = self.offset(guiding.detach())",
        "offset = self.offset(guiding)",
        ("tests/adaption/test_cross_star.py", "tests/adaption/test_adaption_contract.py"),
    ),
    Mutant(
        "dcn_offset_not_zero_init",
        "adaption: dcn",
        "cnet/adaption/dcn.py",
        "nn.init.zeros_(self.offset.weight)",
        "nn.init.normal_(self.offset.weight, std=0.1)",
        ("tests/adaption/test_dcn.py",),
    ),
    Mutant(
        "roi_conv_box_direction_swapped",
        "adaption: roi_conv",
        "cnet/adaption/roi_conv.py",
        'start = 0.0 if corner == "tl" else -1.0',
        'start = -1.0 if corner == "tl" else 0.0',
        ("tests/adaption/test_roi_conv.py",),
    ),
    Mutant(
        "guided_eval_offsets_in_training",
        "adaption: guided (cross_star, roi_conv)",
        "cnet/adaption/guided.py",
        "if not self.training:  # sampling offsets [B, 18, H, W]",
        "if self.training:  # sampling offsets [B, 18, H, W]",
        ("tests/adaption/test_adaption_contract.py",),
    ),
    # --- detector wiring
    Mutant(
        "corner_head_pool_directions_swapped",
        "detector",
        "cnet/detector.py",
        'CornerPool(in_channels, pool_channels, ("top", "left"))\n'
        '        self.br_pool = CornerPool(in_channels, pool_channels, ("bottom", "right"))',
        'CornerPool(in_channels, pool_channels, ("bottom", "right"))\n'
        '        self.br_pool = CornerPool(in_channels, pool_channels, ("top", "left"))',
        ("tests/test_detector.py",),
    ),
    # --- gradient paths between the parts
    Mutant(
        "adaption_reads_detached_pools",  # matching/adaption losses no longer train pools and backbone
        "gradient paths",
        "cnet/detector.py",
        "tl, br, adapted = self.adaption(tl_pool, br_pool)",
        "tl, br, adapted = self.adaption(tl_pool.detach(), br_pool.detach())",
        ("tests/test_detector.py",),
    ),
    Mutant(
        "mask_head_reads_detached_features",  # the mask loss no longer trains the backbone
        "gradient paths / mask_head",
        "cnet/mask_head/centripetal_mask.py",
        '"mask_logits": self.mask_logits(features, roi_t, label_t, input_size),',
        '"mask_logits": self.mask_logits(features.detach(), roi_t, label_t, input_size),',
        ("tests/test_detector.py",),
    ),
    # --- mask head
    Mutant(
        "mask_roi_align_unaligned",  # targets are cropped with the half-pixel rule, features not
        "mask_head",
        "cnet/mask_head/centripetal_mask.py",
        "sampling_ratio=2, aligned=True)  # [R, C, 14, 14]",
        "sampling_ratio=2, aligned=False)  # [R, C, 14, 14]",
        ("tests/mask_head/test_centripetal_mask.py",),
    ),
    Mutant(
        "mask_roi_scale_from_the_other_side",  # invisible on square inputs
        "mask_head",
        "cnet/mask_head/centripetal_mask.py",
        "w / input_size[1], h / input_size[0], w / input_size[1], h / input_size[0]",
        "w / input_size[0], h / input_size[1], w / input_size[0], h / input_size[1]",
        ("tests/mask_head/test_centripetal_mask.py",),
    ),
    Mutant(
        "mask_loss_sums_the_pixels",  # Eq. 8: per-pixel cross-entropy averaged, not summed
        "mask_head",
        "cnet/mask_head/centripetal_mask.py",
        "F.binary_cross_entropy_with_logits(logits[matched], mask_targets[matched])",
        'F.binary_cross_entropy_with_logits(logits[matched], mask_targets[matched], reduction="sum") / matched.sum()',
        ("tests/mask_head/test_centripetal_mask.py",),
    ),
    Mutant(
        "mask_proposals_all_on_image_0",  # invisible with one image per batch
        "mask_head",
        "cnet/mask_head/centripetal_mask.py",
        "rois.append(torch.cat([boxes.new_full((len(boxes), 1), float(i)), boxes], dim=1))",
        "rois.append(torch.cat([boxes.new_full((len(boxes), 1), 0.0), boxes], dim=1))",
        ("tests/mask_head/test_centripetal_mask.py",),
    ),
    # --- criterion
    Mutant(
        "criterion_br_heat_against_tl_targets",
        "criterion",
        "cnet/criterion/base.py",
        '"br_det": corner_focal_loss(level["br_heat"], corners.br_heat)',
        '"br_det": corner_focal_loss(level["br_heat"], corners.tl_heat)',
        ("tests/criterion/test_criterion.py",),
    ),
    Mutant(
        "paper_criterion_averages_the_corners",
        "criterion",
        "cnet/criterion/corner_sum.py",
        "        return tl + br",
        "        return (tl + br) / 2",
        ("tests/criterion/test_conventions.py",),
    ),
    # --- post-processing and NMS
    Mutant(
        "unpad_border_top_left_swapped",
        "postprocess",
        "cnet/types.py",
        "top, left = meta.border\n    return (xy - xy.new_tensor([left, top]))",
        "left, top = meta.border\n    return (xy - xy.new_tensor([left, top]))",
        ("tests/test_predictor.py",),
    ),
    Mutant(
        "pair_indices_swapped",
        "postprocess",
        "cnet/decode.py",
        "ti, bi = top_idx // k, top_idx % k",
        "bi, ti = top_idx // k, top_idx % k",
        ("tests/test_predictor.py",),
    ),
    Mutant(
        "decoded_tl_x_y_cell_sizes_swapped",  # invisible on square inputs; test inputs are not
        "postprocess",
        "cnet/decode.py",
        "tl.xs[i, t] * grid.ratio_x,\n                tl.ys[i, t] * grid.ratio_y,",
        "tl.xs[i, t] * grid.ratio_y,\n                tl.ys[i, t] * grid.ratio_x,",
        ("tests/matching/test_matching_contract.py",),
    ),
    Mutant(
        "top_peak_indices_row_too_short_for_heap_selection",
        "postprocess",
        "cnet/peaks.py",
        "width = max(head * hw + int(counts.max()), _HEAP_RATIO * k)",
        "width = head * hw + int(counts.max())",
        ("tests/test_decode_speed.py",),
    ),
    Mutant(
        "top_peak_indices_nan_block_hides_its_cells",
        "postprocess",
        "cnet/peaks.py",
        "sel = (block_max[:, lo // bs - first : hi // bs - first] <= floor).logical_not_()",
        "sel = block_max[:, lo // bs - first : hi // bs - first] > floor",
        ("tests/test_decode_speed.py",),
    ),
    Mutant(
        "soft_nms_sigma_inverted",
        "NMS",
        "cnet/nms.py",
        "torch.exp(iou.square_().mul_(-1.0 / sigma))",
        "torch.exp(iou.square_().mul_(-sigma))",
        ("tests/test_nms.py",),
    ),
    Mutant(
        "test_config_nms_sigma",
        "postprocess (config)",
        "conf/test/default.yaml",
        "nms_sigma: 0.5",
        "nms_sigma: 0.05",
        ("tests/test_configs.py",),
    ),
]

# every curated mutant: the model side here, the run-time side in mutants_runtime.py
MUTANTS: list[Mutant] = MODEL_MUTANTS + RUNTIME_MUTANTS
