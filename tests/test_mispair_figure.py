"""The per-strategy mispair picture (issue 15): which image is shown and how each category is drawn."""

from __future__ import annotations

import numpy as np

from cnet.tools.mispair_figure import COLOURS, GT_COLOUR, TITLE_H, Panel, draw_panel, grid, pick_image


def rec(image_id: int, error: str, score: float = 0.9, bbox=(10, 10, 20, 20)) -> dict:
    return {"image_id": image_id, "category_id": 1, "bbox": list(bbox), "score": score, "error": error}


def test_the_image_with_the_most_shown_mispairs_over_all_strategies_is_picked():
    ae = Panel("ae", "a", [rec(1, "mispair"), rec(2, "mispair"), rec(2, "mispair", score=0.1), rec(3, "tp")])
    cs = Panel("cs", "b", [rec(2, "tp"), rec(3, "mispair"), rec(3, "mispair")])
    assert pick_image([ae, cs]) == 3  # 2 shown on image 3; image 2's second one scores under 0.3
    assert pick_image([Panel("x", "c", [rec(5, "tp"), rec(4, "tp"), rec(4, "background")])]) == 4  # most shown
    assert pick_image([Panel("x", "c", [rec(6, "tp", score=0.1), rec(5, "tp", score=0.1)])]) == 5  # none shown
    assert pick_image([Panel("x", "c", [])]) is None


def test_a_panel_draws_ground_truth_white_tps_green_and_mispairs_red_on_top():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    gt = [[2, 2, 10, 10]]
    records = [rec(1, "tp", bbox=(20, 20, 15, 15)), rec(1, "mispair", bbox=(5, 25, 30, 10)), rec(1, "tp", 0.2)]
    panel = np.array(draw_panel(image, gt, records, "title"))
    scale = 8  # ceil(320 / 40)
    assert panel.shape == (40 * scale + TITLE_H, 40 * scale, 3)

    def at(x: float, y: float) -> tuple[int, ...]:
        return tuple(panel[int(y * scale) + TITLE_H, int(x * scale)])

    assert at(2, 7) == GT_COLOUR  # the left edge of the ground-truth box
    assert at(35, 22) == COLOURS["tp"]  # the right edge of the shown TP
    assert at(20, 25) == COLOURS["mispair"]  # the mispair's top edge, drawn over the TP's left edge
    assert at(30, 30) == (0, 0, 0)  # inside: boxes are outlines only


def test_the_grid_puts_panels_side_by_side_with_a_legend_below():
    panels = [draw_panel(np.zeros((40, 40, 3), np.uint8), [], [], f"p{k}") for k in range(5)]
    out = grid(panels, columns=3)
    assert (out.width, out.height) == (3 * panels[0].width, 2 * panels[0].height + 24)
