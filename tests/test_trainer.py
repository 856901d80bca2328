"""The Trainer end to end on a tiny synthetic set: train + evaluate, kill-and-resume (epoch and
mid-epoch), NaN guard, gradient accumulation, mixed precision, channels-last and torch.compile."""

from __future__ import annotations

import copy
import functools
import os
import signal
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from cnet.adaption.none import NoAdaption
from cnet.backbone import HourglassNet
from cnet.compose import build_model, compose_config
from cnet.criterion import CornerSum
from cnet.data import CocoDetection, SyntheticData, TestTransform, TrainTransform
from cnet.data.collate import collate
from cnet.data.sampler import GlobalBatchSampler
from cnet.detector import CornerDetector
from cnet.errors import DataError
from cnet.matching.centripetal import Centripetal
from cnet.run import Run
from cnet.schedule import ScheduleConfig, warmup_multistep
from cnet.trainer import Callback, NonFiniteLossError, Trainer, TrainerConfig, TrainState
from cnet.types import GroundTruth, ImageMeta


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SyntheticData:
    return SyntheticData(
        str(tmp_path_factory.mktemp("cache")), seed=0, num_train=16, num_val=4, num_val_crowd=2, image_size=60
    )


# a 2-stack hourglass of 63-px inputs (centripetal matching; the adaption is chosen per test)
TINY = [
    "backbone.num_stacks=2", "backbone.stage_channels=[16,16,24]", "backbone.stage_blocks=[1,1,1]",
    "backbone.stem_channels=8", "backbone.feat_channels=16", "data.test_transform.pad_logical_or=63",
    "test.flip=true", "test.corner_topk=20", "test.num_dets=100", "seed=0",
]  # fmt: skip


def make_run(
    data: SyntheticData,
    out_dir: Path,
    epochs: int = 2,
    lr: float = 5e-4,
    adaption: str = "cross_star",
    overrides: tuple[str, ...] = (),
    val: CocoDetection | None = None,
    **trainer,
) -> Run:
    val_sets = {"bbox": val if val is not None else data.val_dataset(TestTransform(pad_logical_or=63))}
    cfg = compose_config([f"adaption={adaption}", *TINY, *overrides])
    return Run(
        data=data,
        train_transform=TrainTransform(crop_size=63),
        val_sets=val_sets,
        model=build_model(cfg, val_sets["bbox"].num_classes),
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
        schedule=ScheduleConfig(epochs=epochs, milestones=[1], warmup_iters=2),
        trainer=TrainerConfig(**({"batch_size": 4, "progress": False} | trainer)),
        out_dir=out_dir,
        seed=0,
    )


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_train_evaluate_and_kill_resume_match_uninterrupted(data, tmp_path):
    full = make_run(data, tmp_path / "full")
    metrics = full.fit()
    assert {"bbox_AP", "bbox_AP50", "bbox_AR100"} <= metrics.keys()
    assert (tmp_path / "full" / "results_bbox.json").exists()
    assert (tmp_path / "full" / "checkpoints" / "last.pt").exists()

    class StopAfterFirst(Callback):
        def on_checkpoint(self, trainer, epoch: int) -> None:
            if epoch == 1:
                raise Interrupt  # killed between epochs, after the epoch-1 checkpoint was written

    first = make_run(data, tmp_path / "cut")
    with pytest.raises(Interrupt):
        first.fit(callbacks=[StopAfterFirst()])
    resumed = make_run(data, tmp_path / "cut")
    assert resumed.resume is not None and resumed.resume.epoch == 1
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    run = make_run(data, tmp_path, epochs=1)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"previous good checkpoint")
    with torch.no_grad():
        next(run.model.heads[-1].tl_heat.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        run.fit()
    assert ckpt.read_bytes() == b"previous good checkpoint"


def test_batch_larger_than_dataset_is_a_clear_error(data, tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.batch_size"):
        make_run(data, tmp_path, epochs=1, batch_size=1000)


def test_the_training_split_decodes_masks_only_for_a_mask_head(data, tmp_path):
    plain = make_run(data, tmp_path / "plain", epochs=1)
    masked = make_run(data, tmp_path / "mask", epochs=1, overrides=("mask_head=centripetal_mask",))
    assert [r.train_loader.dataset.with_masks for r in (plain, masked)] == [False, True]


def test_training_and_validation_files_must_list_the_same_categories(data, tmp_path):
    val = data.val_dataset(TestTransform(pad_logical_or=63))
    val.cat_ids = val.cat_ids[1:]  # as a validation file without the first category
    with pytest.raises(DataError, match="same categories"):
        make_run(data, tmp_path, epochs=1, val=val)


def weights_equal(a: Run, b: Run) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


class PreemptAt(Callback):
    """SIGUSR2 (SLURM's pre-emption notice) after optimizer step ``at``; the job dies one step later."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step(self, trainer, step: int) -> None:
        if step == self.at:
            os.kill(os.getpid(), signal.SIGUSR2)  # handled before the next step: checkpoint now
        elif step == self.at + 1:
            raise Interrupt  # killed after the checkpoint, mid-epoch


@pytest.mark.slow
def test_mid_epoch_preemption_resumes_at_the_same_step_bit_identical(data, tmp_path):
    full = make_run(data, tmp_path / "full", adaption="none")
    full.fit()
    cut = make_run(data, tmp_path / "cut", adaption="none")
    with pytest.raises(Interrupt):
        cut.fit(callbacks=[PreemptAt(2)])  # 4 steps per epoch: stops inside epoch 0
    resumed = make_run(data, tmp_path / "cut", adaption="none")
    assert resumed.resume is not None
    assert (resumed.resume.epoch, resumed.resume.batch_in_epoch, resumed.resume.step) == (0, 2, 2)
    resumed.fit()
    assert weights_equal(full, resumed), "mid-epoch resume diverged from the uninterrupted run"
    assert resumed.trainer.step == full.trainer.step == 8


@pytest.mark.slow
def test_accumulation_reaches_the_global_batch_with_the_same_schedule(data, tmp_path):
    """batch 2 x 2 accumulation steps: 4 optimizer steps per epoch (16 images / 4), like batch 4."""
    run = make_run(data, tmp_path, epochs=1, adaption="none", batch_size=2, global_batch=4)
    assert run.batch == {"world_size": 1, "batch_per_process": 2, "accum_steps": 2, "global_batch": 4,
                         "lr": 5e-4, "precision": "fp32"}  # fmt: skip
    run.fit()
    assert run.trainer.step == 4


def test_global_batch_must_be_a_multiple_of_the_process_batch(data, tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.global_batch=10 .* trainer\.batch_size=4"):
        make_run(data, tmp_path, global_batch=10)


@pytest.mark.slow
@pytest.mark.parametrize(
    "option",
    [{"precision": "bf16"}, {"channels_last": True}, {"compile": True}],
    ids=["bf16", "channels_last", "compile"],
)
def test_mixed_precision_channels_last_and_compile_train_an_epoch(data, tmp_path, option):
    run = make_run(data, tmp_path, epochs=1, adaption="none", **option)
    seen: list[dict[str, float]] = []

    class Losses(Callback):
        def on_train_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
            seen.append(logs)

    run.fit(callbacks=[Losses()])
    assert seen and all(torch.isfinite(torch.tensor(v)) for v in seen[0].values()), seen
    assert seen[0]["total"] > 0
    if "precision" in option:  # the model really ran in bf16 (autocast), the losses in fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run.model.train()(torch.randn(1, 3, 63, 63))
        assert out.levels[-1]["tl_heat"].dtype == torch.bfloat16
        assert out.float().levels[-1]["tl_heat"].dtype == torch.float32


# TrainState round trip: a trainer resumed from a checkpoint continues exactly where it stopped
def make_bare_trainer(out_dir: Path, seed: int) -> Trainer:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    sched = warmup_multistep(opt, iters_per_epoch=2, milestones=(2,), gamma=0.1, warmup_iters=3)
    # only the state-carrying parts matter here: no data, no criterion, no predictor
    return Trainer(
        model, None, opt, sched, [], None, {}, TrainerConfig(), ScheduleConfig(epochs=3), out_dir, torch.device("cpu")
    )  # type: ignore[arg-type]


def advance(trainer: Trainer, steps: int) -> None:
    for _ in range(steps):
        trainer.model(torch.ones(1, 3)).sum().backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        trainer.scheduler.step()
        trainer.step += 1


def test_resumed_trainer_continues_weights_optimizer_schedule_and_counters(tmp_path):
    first = make_bare_trainer(tmp_path, seed=0)
    advance(first, 3)  # past warm-up: factor 1
    first.epoch, first.mlflow_run_id, first.metrics = 1, "abc123", {"bbox_AP": 0.25}
    first.state().save(tmp_path / "last.pt")

    resumed = make_bare_trainer(tmp_path, seed=1)  # different initial weights
    resumed.load_state(TrainState.load(tmp_path / "last.pt"))
    assert (resumed.epoch, resumed.step, resumed.mlflow_run_id) == (1, 3, "abc123")
    assert resumed.metrics == {"bbox_AP": 0.25}
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"] == 0.3
    assert resumed.scheduler.last_epoch == 3
    advance(first, 2)  # iteration 4 = epoch-2 milestone: lr x 0.1
    advance(resumed, 2)
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"] == 0.03
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


# accumulation under clipping: one optimizer step over two micro-batches, against the gradient of
# the global batch worked out separately (what two DDP processes all-reduce: their mean)
LR = 0.05


def micro_batch_items() -> list[tuple[torch.Tensor, GroundTruth, ImageMeta]]:
    g = torch.Generator().manual_seed(0)
    boxes = [[[2.0, 4.0, 20.0, 25.0]], [[15.0, 10.0, 30.0, 30.0], [1.0, 1.0, 12.0, 9.0]], [[5.0, 6.0, 28.0, 20.0]], []]
    return [
        (torch.randn(3, 31, 31, generator=g), GroundTruth(torch.tensor(b).reshape(-1, 4), torch.arange(len(b)) % 3),
         ImageMeta(i, (31, 31), (31, 31)))
        for i, b in enumerate(boxes)
    ]  # fmt: skip


def tiny_model() -> CornerDetector:
    torch.manual_seed(0)
    backbone = HourglassNet(num_stacks=1, stage_channels=(8, 8), stage_blocks=(1, 1), stem_channels=8, feat_channels=8)
    return CornerDetector(backbone, 3, Centripetal, NoAdaption, pool_channels=8)


def global_batch_gradient(model: CornerDetector, micro_batches: list[list[int]]) -> list[torch.Tensor]:
    """Mean over the micro-batches of each one's own loss gradient, on a copy of ``model``."""
    model, criterion, items = copy.deepcopy(model), CornerSum(3, model.parts), micro_batch_items()
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for indices in micro_batches:
        images, targets, _ = collate([items[i] for i in indices])
        loss = criterion.total(criterion(model(images), targets))
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t += g / len(micro_batches)
    return total


def one_step(model: CornerDetector, sampler: GlobalBatchSampler, clip: float | None, out_dir: Path) -> Trainer:
    """A Trainer (SGD, lr ``LR``, constant schedule) that has trained the first optimizer step of
    ``sampler``'s epoch 0 on ``micro_batch_items`` (DDP-wrapped in an initialised process group)."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(micro_batch_items(), batch_sampler=sampler, collate_fn=collate)  # type: ignore[arg-type]
    trainer = Trainer(
        model, CornerSum(3, model.parts), opt, warmup_multistep(opt, 1, (), warmup_iters=0), loader, None, {},
        TrainerConfig(batch_size=2, global_batch=4, progress=False), ScheduleConfig(epochs=1, clip_grad=clip),
        out_dir, torch.device("cpu"),
    )  # type: ignore[arg-type]  # fmt: skip
    trainer.batch_sampler.set_epoch(0)
    trainer.train_one_epoch(0)
    assert trainer.step == 1
    return trainer


def expected_step(clip: float | None) -> tuple[list[torch.Tensor], float | None]:
    """-lr x the global batch's mean gradient, clipped (``clip`` a multiple of its norm, applied by
    clip_grad_norm_'s rule); and the absolute clip threshold."""
    sampler = GlobalBatchSampler(4, batch_size=2, accum_steps=2)
    sampler.set_epoch(0)
    mean = global_batch_gradient(tiny_model(), list(sampler))
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in mean])))
    scale = 1.0 if clip is None else min(1.0, clip * norm / (norm + 1e-6))
    return [-LR * scale * g for g in mean], None if clip is None else clip * norm


def assert_step(before: list[torch.Tensor], model: CornerDetector, expected: list[torch.Tensor]) -> None:
    for p0, p, want in zip(before, model.parameters(), expected):
        step = p.detach() - p0
        assert (step - want).abs().max() <= 1e-4 * want.abs().max()  # float32 sums in another order


@pytest.mark.parametrize("clip", [None, 1.5, 0.5], ids=["no-clip", "clip-above-the-norm", "clip-below-the-norm"])
def test_an_accumulated_clipped_step_is_the_step_on_the_global_batch_mean_gradient(tmp_path, clip):
    """Two micro-batches of 2 (trainer.global_batch=4), SGD: the step must be -lr x the mean of the two
    micro-batch gradients, clipped by the norm of that mean (clip given as a multiple of it). Adam's
    steps hardly change when every gradient doubles; a clip threshold between the norm and twice it
    (1.5) tells a summed gradient from the mean whatever the optimizer, as it would for DDP
    (tests/test_distributed.py: two processes, the same step)."""
    expected, threshold = expected_step(clip)
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, GlobalBatchSampler(4, batch_size=2, accum_steps=2), threshold, tmp_path)
    assert_step(before, model, expected)


class _EvalSizes(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.seen.append((epoch, len(trainer.eval_sets["bbox"])))


@pytest.mark.slow
def test_evaluations_between_epochs_leave_the_final_checkpoint_and_results_bit_identical(data, tmp_path):
    plain = make_run(data, tmp_path / "plain", epochs=3, adaption="none")
    plain.fit()
    sizes = _EvalSizes()
    evaluated = make_run(data, tmp_path / "every", epochs=3, adaption="none", eval_every=1, eval_subset=2)
    evaluated.fit(callbacks=[sizes])
    assert sizes.seen == [(1, 2), (2, 2), (3, 4)]  # subsets between epochs, the whole split at the end
    # the same bytes: weights, optimizer, schedule, RNG states (each eval loader drew from torch's) and figures
    checkpoint = Path("checkpoints") / "last.pt"
    assert (tmp_path / "plain" / checkpoint).read_bytes() == (tmp_path / "every" / checkpoint).read_bytes()
    for name in ("results_bbox.json", "mispairs_bbox.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "every" / name).read_bytes(), name
