"""Data-parallel training on CPU (gloo): DDP equals gradient accumulation; sharded evaluation equals
one process; one MLflow run per job; a DDP checkpoint loads in a single process."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from cnet.compose import build_detector, build_model, compose_config
from cnet.data import SyntheticData, TestTransform, TrainTransform
from cnet.run import Run
from cnet.schedule import ScheduleConfig
from cnet.trainer import TrainerConfig, TrainState
from tests.servers import free_port
from tests.test_provenance import assert_provenance
from tests.test_train_cli import FAST, ROOT

TORCHRUN = Path(sys.executable).with_name("torchrun")


# a 1-stack hourglass of 63-px inputs, centripetal matching without adaption
TINY = [
    "backbone.stage_channels=[16,16]", "backbone.stage_blocks=[1,1]", "backbone.stem_channels=8",
    "backbone.feat_channels=16", "adaption=none", "data.test_transform.pad_logical_or=63", "test.corner_topk=20",
    "test.num_dets=100", "seed=0",
]  # fmt: skip


def make_run(cache: str, out_dir: Path) -> Run:
    data = SyntheticData(cache, seed=0, num_train=8, num_val=5, num_val_crowd=2, image_size=60)
    val_sets = {"bbox": data.val_dataset(TestTransform(pad_logical_or=63))}
    return Run(
        data=data, train_transform=TrainTransform(crop_size=63), val_sets=val_sets,
        model=build_model(compose_config(TINY), val_sets["bbox"].num_classes),
        optimizer=functools.partial(torch.optim.Adam, lr=5e-4), schedule=ScheduleConfig(epochs=1),
        trainer=TrainerConfig(batch_size=2, progress=False), out_dir=out_dir,
    )  # fmt: skip


def _evaluate_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        run = make_run(cache, Path(out) / "ddp")
        metrics = run.trainer.evaluate()  # untrained weights: identical on every rank (same seed)
        torch.save(metrics, Path(out) / f"metrics_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process_figure_for_figure(tmp_path):
    cache = str(tmp_path / "cache")
    single = make_run(cache, tmp_path / "single").trainer.evaluate()
    # spawn: the port is chosen just before and used at once; a clash would fail loudly, not silently
    mp.spawn(_evaluate_worker, args=(2, free_port(), cache, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"metrics_rank{rank}.pt") == single  # every figure, exactly
    for results in sorted((tmp_path / "single").glob("results_*.json")):
        assert results.read_bytes() == (tmp_path / "ddp" / results.name).read_bytes(), results.name
    assert not (tmp_path / "ddp" / "checkpoints").exists()  # evaluation writes no checkpoint


def train(tmp: Path, name: str, launcher: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/{name}.db",
               OMP_NUM_THREADS="1")  # fmt: skip
    args = [*launcher, str(ROOT / "train.py"), *FAST, f"hydra.run.dir={tmp / name}", "adaption=none", *extra]
    return subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)


def parameters(path: Path, overrides: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The trained weights (no buffers: DDP keeps rank 0's batch-norm statistics)."""
    state = TrainState.load(path)
    model = build_detector(compose_config(["adaption=none", *overrides]), 4)
    model.load_state_dict(state.model)  # strict: a DDP checkpoint loads into a plain model
    return dict(model.named_parameters())


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
def test_two_process_ddp_equals_one_process_with_two_accumulation_steps(tmp_path):
    batch = ["trainer.batch_size=2", "trainer.global_batch=4", "schedule.warmup_iters=0"]
    one = train(tmp_path, "accum", [sys.executable], batch)
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(tmp_path, "ddp", [str(TORCHRUN), "--standalone", "--nproc_per_node=2"], batch)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "accum_steps 2" in one.stdout and "world_size 2, batch_per_process 2, accum_steps 1" in two.stdout
    a, b = parameters(tmp_path / "accum/checkpoints/last.pt"), parameters(tmp_path / "ddp/checkpoints/last.pt")
    worst = max_relative_difference(a, b)
    assert worst <= 1e-6, f"max relative difference {worst:.3g}"
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)
    runs = MlflowClient(f"sqlite:///{tmp_path}/ddp.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path}/ddp.db").search_experiments()]
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 1 tracked nothing
    assert runs[0].data.params["batch.world_size"] == "2" and runs[0].data.tags["paper_batch"] == "false"
    assert runs[0].data.metrics["bbox_AP"] >= 0
    assert_provenance(f"sqlite:///{tmp_path}/ddp.db", runs[0].info.run_id, 2, tmp_path / "ddp_artifacts")  # 2 ranks


def _one_step_worker(rank: int, world: int, port: int, clip: float | None, out: str) -> None:
    from tests.test_trainer import GlobalBatchSampler, one_step, tiny_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = tiny_model()
        one_step(model, GlobalBatchSampler(4, batch_size=2, world_size=2, rank=rank), clip, Path(out))
        torch.save([p.detach() for p in model.parameters()], Path(out) / f"params_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("clip", [None, 1.5], ids=["no-clip", "clip-above-the-norm"])
def test_a_clipped_ddp_step_equals_the_accumulated_one_and_the_global_batch_mean_gradient(tmp_path, clip):
    """Two gloo processes with one micro-batch of 2 each, SGD: the step is -lr x the clipped mean
    gradient of the 4 images, worked out apart from the trainer (clip 1.5 x its norm: a summed gradient
    would be clipped, the mean is not), the step one process accumulating both micro-batches takes
    (tests/test_trainer.py)."""
    from tests.test_trainer import assert_step, expected_step, tiny_model

    expected, threshold = expected_step(clip)
    before = [p.detach() for p in tiny_model().parameters()]
    mp.spawn(_one_step_worker, args=(2, free_port(), threshold, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):  # DDP keeps the ranks' weights equal
        model = tiny_model()
        with torch.no_grad():
            for p, trained in zip(model.parameters(), torch.load(tmp_path / f"params_rank{rank}.pt")):
                p.copy_(trained)
        assert_step(before, model, expected)


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)).item() for k in a)


# epochs 0 (mask head idle: no gradient), 1 (it switches on) and 2; every proposal with a same-class
# object trains (IoU >= 0), so the head's weights really move; clipping active in every step
MASK = ["mask_head=centripetal_mask", "mask_head.start_epoch=1", "mask_head.iou_threshold=0.0",
        "schedule.epochs=3", "schedule.milestones=[2]", "schedule.clip_grad=0.5"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
def test_mask_head_under_ddp_equals_one_process_with_accumulation_across_its_start_epoch(tmp_path):
    batch = ["trainer.batch_size=2", "trainer.global_batch=4", "schedule.warmup_iters=0", *MASK]
    one = train(tmp_path, "accum", [sys.executable], batch)
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(tmp_path, "ddp", [str(TORCHRUN), "--standalone", "--nproc_per_node=2"], batch)
    assert two.returncode == 0, two.stderr[-3000:]
    head = ("mask_head=centripetal_mask",)
    a, b = (
        parameters(tmp_path / "accum/checkpoints/last.pt", head),
        parameters(tmp_path / "ddp/checkpoints/last.pt", head),
    )
    assert any(k.startswith("mask_head.") for k in a)
    worst = max_relative_difference(a, b)
    assert worst <= 1e-6, f"max relative difference {worst:.3g}"
    for name in ("ddp", "accum"):  # the head trained from epoch 1 on: a positive mask loss
        client = MlflowClient(f"sqlite:///{tmp_path}/{name}.db")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        mask = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_mask")}
        assert mask[1] == 0 and mask[2] > 0 and mask[3] > 0, mask


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
def test_two_nodes_on_one_machine_equal_one_node_with_two_processes(tmp_path):
    batch = ["trainer.batch_size=2", "schedule.warmup_iters=0", "schedule.epochs=2", "schedule.milestones=[1]"]
    one_node = train(tmp_path, "one_node", [str(TORCHRUN), "--standalone", "--nproc_per_node=2"], batch)
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    # two launchers, one per "node", meeting at node 0's address (as two SLURM nodes would)
    env = dict(os.environ, CNET_CACHE_DIR=str(tmp_path / "cache"),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/two_nodes.db", OMP_NUM_THREADS="1")  # fmt: skip
    port = free_port()
    args = [str(ROOT / "train.py"), *FAST, f"hydra.run.dir={tmp_path / 'two_nodes'}", "adaption=none", *batch]
    nodes = [
        subprocess.Popen([str(TORCHRUN), "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                          "--master_addr=127.0.0.1", f"--master_port={port}", *args],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    outs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "world_size 2, batch_per_process 2" in outs[0]
    a, b = parameters(tmp_path / "one_node/checkpoints/last.pt"), parameters(tmp_path / "two_nodes/checkpoints/last.pt")
    worst = max_relative_difference(a, b)
    assert worst <= 1e-6, f"max relative difference {worst:.3g}"
