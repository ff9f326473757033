"""Tests for genbook.widgets: the static fallback that the rendered book and scripts see."""

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from genbook import widgets


def test_live_widgets_off_when_static(monkeypatch):
    """GENBOOK_STATIC=1 turns live widgets off."""
    monkeypatch.setenv("GENBOOK_STATIC", "1")
    assert widgets.live_widgets() is False


def test_live_widgets_off_outside_a_kernel():
    """Outside a Jupyter kernel (as under pytest) there is no live widget frontend."""
    assert widgets.live_widgets() is False


def test_knob_static_renders_each_static_value(monkeypatch):
    """With GENBOOK_STATIC=1, knob calls render once per static value and draws one titled panel each (returning None)."""
    monkeypatch.setenv("GENBOOK_STATIC", "1")
    calls = []

    def render(value, ax):
        calls.append(value)
        ax.plot([0, 1], [0, value])

    assert widgets.knob(render, [0.1, 0.2, 0.5, 1.0, 2.0], "w", static_values=[0.5, 2.0]) is None
    assert calls == [0.5, 2.0]
    assert plt.get_fignums() == [1]
    assert [ax.get_title() for ax in plt.figure(1).axes] == ["w = 0.5", "w = 2"]


def test_knob_static_default_picks_spread_values(monkeypatch):
    """Without static_values, knob draws every (len // 4)-th value, at most 5 panels."""
    monkeypatch.setenv("GENBOOK_STATIC", "1")
    calls = []
    widgets.knob(lambda v, ax: calls.append(v), list(range(12)), "steps")
    assert calls == [0, 3, 6, 9]


def test_static_panels_titles_strings():
    """static_panels returns a Figure and titles non-numeric values as 'name = value'."""
    fig = widgets.static_panels(lambda v, ax: None, ["euler", "heun"], "solver")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["solver = euler", "solver = heun"]
