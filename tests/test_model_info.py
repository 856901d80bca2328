"""`python -m cnet.tools.model_info`: parameter counts of the composed detector."""

from __future__ import annotations

import json

from cnet.compose import compose_config
from cnet.tools.model_info import main


def test_counts_add_up_over_the_stacks(capsys):
    main(["--json", "--num-classes", "3", "backbone.num_stacks=2"])  # the demo's tiny hourglass, 2 stacks
    counts = json.loads(capsys.readouterr().out)
    stacks = 2
    assert counts["backbone"] > 0 and counts["head_per_level"] > 0
    # one unshared head per stack; inference runs only the last one
    assert counts["total"] == counts["backbone"] + stacks * counts["head_per_level"]
    assert counts["inference"] == counts["backbone"] + counts["head_per_level"]


def test_classes_and_overrides_change_the_head(capsys):
    main(["--json", "--num-classes", "3"])
    three = json.loads(capsys.readouterr().out)
    main(["--json", "--num-classes", "4"])
    four = json.loads(capsys.readouterr().out)
    # one more class: one more output channel in each of the two corner heatmaps' last 1x1 conv
    # (in_channels weights + 1 bias each)
    c = compose_config([]).backbone.feat_channels
    assert four["head_per_level"] - three["head_per_level"] == 2 * (c + 1)
    main(["adaption=cross_star", "--num-classes", "3"])
    table = capsys.readouterr().out
    assert table.startswith("model: adaption=cross_star, 3 classes") and "head_per_level" in table
