"""Templates + layout: a :class:`ModuleContext` becomes formatted source text.

The templates write every statement (one form per kind, on one line) and hand
it to ``layout``.  black defines the format: ``render_module`` lays each
statement out as black would (:mod:`.layout`: as it is when it fits, the
common splits written out, else black's layout of its shape).
``render_module_with_black`` is the reference it must equal: the statements
left on one line, then ``black.format_str`` over the whole module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

import jinja2

from stitch.core.errors import StitchCodegenError

from .context import ModuleContext
from .layout import Layout, black_mode

TEMPLATE_PACKAGE = "stitch.templates"
TEMPLATE = "execution_fn.py.j2"

__all__ = [
    "black_mode",
    "format_source",
    "render_module",
    "render_module_with_black",
    "render_one_line",
    "template_environment",
]


def _load_template(name: str) -> str:
    try:
        return resources.files(TEMPLATE_PACKAGE).joinpath(name).read_text("utf-8")
    except FileNotFoundError:
        raise jinja2.TemplateNotFound(name) from None


@functools.cache
def template_environment() -> jinja2.Environment:
    """The one Jinja environment, built on first use, loading installed templates."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # NOTE: [markup templates escape]
        # Emitted Python is written as given; a page (the profile's chart,
        # *.html.j2) escapes every value, so a module path or a title cannot
        # break its markup.
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False, default=False
        ),
    )


def _render(context: ModuleContext, layout: Callable[[str, int], str]) -> str:
    return (
        template_environment()
        .get_template(TEMPLATE)
        .render(
            header=context.header,
            imports=context.imports,
            aliases=context.aliases,
            functions=context.functions,
            layout=layout,
        )
    )


def render_module(context: ModuleContext) -> str:
    """The module source, formatted as black formats it: statements that fit
    as they are, the others laid out by shape (layout.py)."""
    return _render(context, Layout())


def render_one_line(context: ModuleContext) -> str:
    """The module with every statement on one line: what black is given."""
    return _render(context, lambda text, depth: text)


def render_module_with_black(context: ModuleContext) -> str:
    """The reference: :func:`render_one_line`, formatted by black."""
    return format_source(render_one_line(context))


def __getattr__(name: str) -> Any:
    if name == "BLACK_MODE":  # NOTE: [black is imported where it runs] (layout.py)
        return black_mode()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_source(source: str) -> str:
    import black

    try:
        formatted = black.format_str(source, mode=black_mode())
        # black accepts a few things the compiler rejects; check the real thing.
        compile(formatted, "<stitch-emitted>", "exec")
    except (black.InvalidInput, SyntaxError) as exc:  # pragma: no cover - a codegen bug
        raise StitchCodegenError(
            f"emitted source is not valid Python ({exc}); this is a Stitch bug:\n"
            f"{source}"
        ) from exc
    return formatted
