"""Interactive knobs with a static fallback, so the rendered book shows a figure, never an empty box.

``knob(render, values, name)`` calls ``render(value, ax)`` to draw one setting on an axis. In a
live notebook (Jupyter, Colab) it shows a slider that redraws; when there is no live widget
frontend (the book build, scripts, or ``GENBOOK_STATIC=1``) it draws a row of panels, one per
value in ``static_values``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt

from genbook.notebook import static_output


def live_widgets() -> bool:
    """True when a slider would be seen: an IPython kernel with ipywidgets, and GENBOOK_STATIC unset."""
    if static_output():
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ in ("ZMQInteractiveShell", "Shell")


def static_panels(render: Callable[[Any, Any], None], values: Sequence, name: str, panel: float = 2.2):
    """One panel per value, titled ``name = value``; returns the figure."""
    fig, axes = plt.subplots(1, len(values), figsize=(panel * len(values), panel * 1.1), squeeze=False)
    for ax, v in zip(axes[0], values):
        render(v, ax)
        ax.set_title(f"{name} = {v:g}" if isinstance(v, (int, float)) else f"{name} = {v}", fontsize=9)
    fig.tight_layout()
    return fig


def knob(
    render: Callable[[Any, Any], None],
    values: Sequence,
    name: str,
    default: Any = None,
    static_values: Sequence | None = None,
    panel: float = 2.6,
) -> None:
    """A slider over ``values`` redrawing ``render(value, ax)``, or static panels when widgets cannot show.

    Displays its output and returns None, so it can be the last line of a cell without a second copy.
    """
    if not live_widgets():
        chosen = list(static_values) if static_values is not None else list(values)[:: max(1, len(values) // 4)][:5]
        static_panels(render, chosen, name)
        plt.show()
        return None
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    slider = widgets.SelectionSlider(options=list(values), value=values[0] if default is None else default, description=name)

    def redraw(change: dict | None = None) -> None:
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(panel, panel))
            render(slider.value, ax)
            plt.show()

    slider.observe(redraw, names="value")
    display(widgets.VBox([slider, out]))
    redraw()
    return None
