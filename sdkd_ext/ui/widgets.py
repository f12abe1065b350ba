"""The tab's widgets made from the one table of fields (sdkd_ext.terms): label, default and kind from a job's field,
kept by field name so a handler can turn the values gradio passes (in a section's order) into one `terms.Form`.
gradio is passed in, not imported, so this module loads without it."""

from __future__ import annotations

from ..terms import JOBS, Form


class Widgets:
    """One tab section's widgets by field name, each made from its field of `job` (or put in as made elsewhere)."""

    def __init__(self, gr, job: str):
        self.gr, self.job = gr, job
        self.made: dict[str, object] = {}

    def add(self, name: str, make=None, **options) -> object:
        """The widget for field `name`: a checkbox for a switch, a whole or decimal number box, a radio for choices
        (`make` another gradio component, e.g. gr.Dropdown), a text box otherwise; `options` go to gradio."""
        f = JOBS[self.job][name]
        value = f.default_for("tab")
        options = {"label": f.tab, **({} if value is None else {"value": value}), **options}
        if make is None:
            make = self._kind(value, "choices" in options or f.choices is not None)
        if make in (self.gr.Radio, self.gr.Dropdown) and "choices" not in options:
            options["choices"] = list(f.choices)
        if make is self.gr.Number and isinstance(value, int):
            options.setdefault("precision", 0)
        return self.put(name, make(**options))

    def _kind(self, value: object, choices: bool):
        """The gradio component for a field's default value."""
        gr = self.gr
        if isinstance(value, bool):
            return gr.Checkbox
        if isinstance(value, (int, float)):
            return gr.Number
        return gr.Radio if choices else gr.Textbox

    def put(self, name: str, widget: object) -> object:
        """Keep a widget under `name` (a value the job reads, e.g. a host's model list)."""
        self.made[name] = widget
        return widget

    def __getitem__(self, name: str) -> object:
        return self.made[name]

    def inputs(self, names: tuple[str, ...]) -> list:
        """The widgets of `names`, in that order (a click's inputs)."""
        return [self.made[n] for n in names]


def form(job: str, names: tuple[str, ...], values: tuple) -> Form:
    """The tab's form of `job` from widget values given in the order of `names`."""
    return Form.of(job, "tab", names, values)
