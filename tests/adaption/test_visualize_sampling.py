"""`python -m cnet.tools.visualize_sampling` on tiny run folders written the way train.py/engine.py do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from cnet.adaption.sampling import kernel_taps, regular_locations, sampling_locations
from cnet.checkpoint import rng_state, save_checkpoint
from cnet.compose import build_detector, compose_config
from cnet.tools.visualize_sampling import main
from cnet.tracking import Tracker

SMALL = [
    "data.source.num_train=8",
    "data.source.num_val=2",
    "data.source.num_val_crowd=1",
    "data.source.image_size=60",
    "data.test_transform.pad_logical_or=63",
]


def make_run(run_dir: Path, adaption: str, run_id: str | None) -> None:
    """A freshly initialised model saved as engine.py saves it, next to its composed config."""
    cfg = compose_config([f"adaption={adaption}", *SMALL])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # unresolved, as Hydra writes it
    torch.manual_seed(0)
    model = build_detector(cfg, 4)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_checkpoint(
        run_dir / "checkpoints" / "last.pt",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": 1,
            "rng": rng_state(),
            "mlflow_run_id": run_id,
            "metrics": {},
        },
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run folders (cross_star logged to MLflow, none without a run id) and the store's URI."""
    tmp = tmp_path_factory.mktemp("viz")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNET_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        with Tracker(uri, "viz") as tracker:
            run_id = tracker.run_id
        make_run(tmp / "cross_star", "cross_star", run_id)
        make_run(tmp / "none", "none", None)
        yield tmp, uri, run_id


@pytest.mark.slow
def test_writes_the_figure_and_logs_it_to_mlflow(runs, capsys):
    tmp, uri, run_id = runs
    out = tmp / "fig" / "points.png"
    assert main([str(tmp / "cross_star"), str(tmp / "none"), "--out", str(out), "--corners", "2"]) == 0
    assert out.stat().st_size > 0
    with Image.open(out) as im:
        assert im.size[0] > im.size[1]  # two panels side by side
    printed = capsys.readouterr().out
    assert "no MLflow run id" in printed and run_id in printed
    arts = [a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id, "figures")]
    assert arts == ["figures/points.png"]


@pytest.mark.slow
def test_own_image_and_default_output(runs):
    tmp, _, _ = runs
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(tmp / "grey.png")
    assert main([str(tmp / "none"), "--image", str(tmp / "grey.png")]) == 0
    assert (tmp / "none" / "sampling_points.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "broken,message",
    [
        ("missing_dir", "run dir not found"),
        ("checkpoints/last.pt", "checkpoint not found"),
        (".hydra/config.yaml", "config not found"),
    ],
)
def test_bad_run_dir_is_one_line_exit_2(runs, tmp_path, capsys, broken, message):
    tmp, _, _ = runs
    run = tmp_path / "run"
    if broken != "missing_dir":
        make_run(run, "none", None)
        (run / broken).unlink()
    assert main([str(tmp / "none"), str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_locations_are_taps_plus_offsets():
    """Cell (x=3, y=1) of a 5-wide map; tap 4 (the centre) moved by (dy, dx) = (0.5, -2)."""
    offset = torch.zeros(1, 18, 4, 5)
    offset[0, 8, 1, 3], offset[0, 9, 1, 3] = 0.5, -2.0
    inds = torch.tensor([[1 * 5 + 3]])
    plain = regular_locations(inds, 5)[0, 0]
    assert torch.equal(plain, torch.tensor([3.0, 1.0]) + kernel_taps())
    assert torch.equal(plain[0], torch.tensor([2.0, 0.0])) and torch.equal(plain[5], torch.tensor([4.0, 1.0]))
    moved = sampling_locations(offset, inds, 5)[0, 0]
    assert torch.equal(moved[4], torch.tensor([1.0, 1.5]))
    assert torch.equal(torch.cat([moved[:4], moved[5:]]), torch.cat([plain[:4], plain[5:]]))
    with pytest.raises(ValueError, match="width"):
        sampling_locations(offset, inds, 4)
