"""The SLURM launcher configs compose (no cluster needed)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from cnet.compose import CONFIG_DIR


def _launcher(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_slurm_gpu_runs_one_task_per_gpu():
    launcher = _launcher("hydra/launcher=slurm_gpu")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 8, 8)
    launcher = _launcher("hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=4")
    assert launcher.tasks_per_node == 4


def test_slurm_cpu_fits_the_test_cluster():
    launcher = _launcher("hydra/launcher=slurm_cpu")
    assert launcher.partition == "debug" and "SlurmLauncher" in launcher._target_
    assert (launcher.nodes, launcher.tasks_per_node, launcher.cpus_per_task, launcher.gpus_per_node) == (1, 2, 1, 0)
    assert (launcher.mem_gb, launcher.timeout_min, launcher.max_num_timeout) == (2, 60, 3)
