"""The goodput target on the report's attainment curves is named in the legend, not written at
the line's end where the curves near the target run over it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from nexussched.eval.plot_style import draw_target  # noqa: E402


def test_horizontal_target_is_in_the_legend_not_on_the_curves():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1.0, 0.95, 0.9], label="prism")  # a curve ending on the target line
    draw_target(ax, 0.9)
    leg = ax.legend()
    assert [t.get_text() for t in leg.get_texts()] == ["prism", "90% target"]
    assert not ax.texts  # no free-floating label for the curves to cover
    plt.close(fig)


def test_vertical_target_keeps_its_label_above_the_axes():
    fig, ax = plt.subplots()
    draw_target(ax, 0.9, vertical=True)
    assert [t.get_text().strip() for t in ax.texts] == ["90% target"]
    plt.close(fig)
