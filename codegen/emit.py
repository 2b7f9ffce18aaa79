"""Templates + black: a :class:`ModuleContext` becomes formatted source text."""

from __future__ import annotations

import functools
from importlib import resources

import black
import jinja2

from .context import ModuleContext
from .errors import StitchCodegenError

TEMPLATE_PACKAGE = "stitch.templates"
BLACK_MODE = black.Mode(
    target_versions={black.TargetVersion.PY310},
    line_length=88,
)


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
        autoescape=False,
    )


def format_source(source: str) -> str:
    try:
        formatted = black.format_str(source, mode=BLACK_MODE)
        # black accepts a few things the compiler rejects; check the real thing.
        compile(formatted, "<stitch-emitted>", "exec")
    except (black.InvalidInput, SyntaxError) as exc:  # pragma: no cover - a codegen bug
        raise StitchCodegenError(
            f"emitted source is not valid Python ({exc}); this is a Stitch bug:\n"
            f"{source}"
        ) from exc
    return formatted


def render_module(context: ModuleContext, template: str = "execution_fn.py.j2") -> str:
    raw = template_environment().get_template(template).render(
        header=context.header,
        imports=context.imports,
        functions=context.functions,
    )
    return format_source(raw)
