"""The curated mutations of the run-time side: sampler, test-time views, schedule, resume,
accumulation, tracking and the report (the model side and the list of all: mutants.py)."""

from __future__ import annotations

from mutant import Mutant

RUNTIME_MUTANTS: list[Mutant] = [
    # --- sampler (which images each rank and micro-batch trains on)
    Mutant(
        "sampler_order_ignores_the_epoch",
        "sampler",
        "cnet/data/sampler.py",
        "self.generator.manual_seed(1000003 * (epoch + 1) + seed)",
        "self.generator.manual_seed(seed)",
        ("tests/data/test_sampler.py",),
    ),
    Mutant(
        "sampler_ranks_share_a_slice",  # every rank trains on the same images
        "sampler",
        "cnet/data/sampler.py",
        "first = (m * w + self.rank) * b",
        "first = m * w * b",
        ("tests/data/test_sampler.py",),
    ),
    # --- test-time augmentation (predictor views)
    Mutant(
        "mirror_keeps_x_order",
        "TTA",
        "cnet/ops.py",
        "[width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]]",
        "[width - boxes[:, 0], boxes[:, 1], width - boxes[:, 2], boxes[:, 3]]",
        ("tests/test_views.py", "tests/test_predictor.py"),
    ),
    Mutant(
        "hflip_invert_is_identity",
        "TTA",
        "cnet/views.py",
        "    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:\n"
        "        return mirror_boxes(boxes, input_size[1])",
        "    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:\n        return boxes",
        ("tests/test_views.py", "tests/test_predictor.py"),
    ),
    Mutant(
        "scale_view_border_top_left_swapped",  # invisible on square inputs
        "TTA / multi-scale views",
        "cnet/views.py",
        "top, left = out_h // 2 - rh // 2, out_w // 2 - rw // 2\n        sx, sy",
        "left, top = out_h // 2 - rh // 2, out_w // 2 - rw // 2\n        sx, sy",
        ("tests/test_views.py",),
    ),
    Mutant(
        "scale_view_image_pasted_top_left_swapped",  # the pixels move, the boxes do not
        "TTA / multi-scale views",
        "cnet/views.py",
        "top, left = out_h // 2 - rh // 2, out_w // 2 - rw // 2\n        out = x.new_zeros",
        "left, top = out_h // 2 - rh // 2, out_w // 2 - rw // 2\n        out = x.new_zeros",
        ("tests/test_views.py",),
    ),
    Mutant(
        "merge_view_index_image_major",
        "TTA",
        "cnet/predictor.py",
        "for c in cands[v * b : (v + 1) * b]]",
        "for c in cands[v :: len(views)]]",
        ("tests/test_predictor.py",),
    ),
    Mutant(
        "mask_view_map_not_mapped_back",
        "TTA / mask_head",
        "cnet/mask_head/inference.py",
        "probs = view.invert_masks(predict(outputs.features, rois, det.labels, outputs.input_size))",
        "probs = predict(outputs.features, rois, det.labels, outputs.input_size)",
        ("tests/mask_head/test_inference.py",),
    ),
    Mutant(
        "oracle_not_mirrored",
        "TTA / oracle",
        "cnet/predictor.py",
        "GroundTruth(view.apply_boxes(t.boxes, size), t.labels)",
        "GroundTruth(t.boxes, t.labels)",
        ("tests/test_oracle.py",),
    ),
    # --- schedule
    Mutant(
        "schedule_no_step_decay",
        "schedule",
        "cnet/schedule.py",
        "return warm * gamma ** sum(it >= s for s in steps)",
        "return warm",
        ("tests/test_schedule.py",),
    ),
    Mutant(
        "schedule_warmup_flat",
        "schedule",
        "cnet/schedule.py",
        "warm = warmup_ratio + (1 - warmup_ratio) * it / warmup_iters",
        "warm = warmup_ratio",
        ("tests/test_schedule.py",),
    ),
    # --- checkpoint / resume
    Mutant(
        "resume_forgets_scheduler",
        "checkpoint/resume",
        "cnet/trainer.py",
        "        self.scheduler.load_state_dict(state.scheduler)\n",
        "",
        ("tests/test_trainer.py",),
    ),
    Mutant(
        "resume_restarts_the_step_counter",
        "checkpoint/resume",
        "cnet/trainer.py",
        "self.epoch, self.step, self.batch_in_epoch = int(state.epoch), int(state.step), int(state.batch_in_epoch)",
        "self.epoch, self.step, self.batch_in_epoch = int(state.epoch), 0, int(state.batch_in_epoch)",
        ("tests/test_trainer.py",),
    ),
    # --- gradient accumulation
    Mutant(
        "accumulation_loss_not_divided",  # Adam hides it; a clipped or SGD step does not
        "accumulation",
        "cnet/trainer.py",
        "self.scaler.scale(loss / self.accum_steps).backward()",
        "self.scaler.scale(loss).backward()",
        ("tests/test_trainer.py",),
    ),
    # --- tracking
    Mutant(
        "resume_other_experiment_allowed",
        "tracking",
        "cnet/tracking.py",
        "if run.info.experiment_id != self._experiment_id:",
        "if run.info.experiment_id != run.info.experiment_id:",
        ("tests/test_tracking.py",),
    ),
    Mutant(
        "resume_deleted_run_allowed",
        "tracking",
        "cnet/tracking.py",
        'if run.info.lifecycle_stage == "deleted":',
        'if run.info.lifecycle_stage == "removed":',
        ("tests/test_tracking.py",),
    ),
    # --- report
    Mutant(
        "report_population_std",
        "report",
        "cnet/tools/report_tables.py",
        "float(values.std(ddof=1))",
        "float(values.std(ddof=0))",
        ("tests/test_report.py",),
    ),
    Mutant(
        "report_reads_box_ap_for_every_table",  # Table 3's figure is the mask AP
        "report column selection",
        "cnet/tools/report_tables.py",
        'columns = {m: f"metrics.{spec.metric}_{m}" for m in METRICS}',
        'columns = {m: f"metrics.bbox_{m}" for m in METRICS}',
        ("tests/test_report_experiments.py",),
    ),
]
