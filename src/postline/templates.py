"""Email templates: Jinja2 in a sandbox, HTML autoescaped, every variable required.

Template text comes from API keys and variables from each send, so neither is
trusted: the immutable sandbox refuses attribute tricks and mutation, a variable
the template names but the send left out is an error naming it (a blank greeting
is worse than a refused send), and the output is cut off past a size cap so that a
loop cannot build an email bigger than a send may be.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from postline.validation import check_header_text

_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")
_MISSING_ATTRIBUTE = re.compile(r"has no attribute '([^']+)'")


class TemplateProblem(ValueError):
    """A template that cannot be compiled or rendered; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Parts:
    """The three texts of a template (or of its rendering); html or text may be None."""

    subject: str
    html: str | None
    text: str | None


#: Largest result of ``*`` or ``**`` in a template: ``{{ "x" * 10**9 }}`` would build a
#: gigabyte before the output cap saw a character of it.
MAX_OPERATION_SIZE = 1_000_000


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with ``*`` and ``**`` refused past a size (Jinja2's own
    recipe: ``intercepted_binops`` and ``call_binop``)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("exponent too large for a template")
        if operator == "*" and _repeats_too_much(left, right):
            raise SecurityError("repetition too large for a template")
        return super().call_binop(context, operator, left, right)


def _repeats_too_much(left: Any, right: Any) -> bool:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            return len(sequence) * count > MAX_OPERATION_SIZE
    return False


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    return _BoundedSandbox(
        undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True
    )


class Renderer:
    """Compiles and renders templates; one per process (compiling costs, rendering less)."""

    def __init__(self, output_limit: int) -> None:
        self.output_limit = output_limit
        self._plain = _environment(autoescape=False)
        self._html = _environment(autoescape=True)

    def check(self, parts: Parts) -> None:
        """Refuse template text that does not compile, naming the part and line."""
        for name, source in self._sources(parts):
            try:
                self._env(name).parse(source)
            except TemplateSyntaxError as exc:
                raise TemplateProblem(name, f"line {exc.lineno}: {exc.message}") from None

    def render(self, parts: Parts, variables: Mapping[str, Any]) -> Parts:
        rendered: dict[str, str | None] = {"subject": None, "html": None, "text": None}
        for name, source in self._sources(parts):
            rendered[name] = self._render_one(name, source, variables)
        subject = rendered["subject"] or ""
        try:
            check_header_text(subject)
        except ValueError as exc:
            raise TemplateProblem("subject", f"the rendered subject {exc}") from None
        if len(subject) > 998:
            raise TemplateProblem("subject", "the rendered subject is over 998 characters")
        return Parts(subject, rendered["html"], rendered["text"])

    def _render_one(self, name: str, source: str, variables: Mapping[str, Any]) -> str:
        env = self._env(name)
        try:
            template = env.from_string(source)
            pieces: list[str] = []
            size = 0
            for piece in template.generate(**variables):
                size += len(piece)
                if size > self.output_limit:
                    raise TemplateProblem(
                        name, f"renders to more than {self.output_limit} characters"
                    )
                pieces.append(piece)
        except UndefinedError as exc:
            raise TemplateProblem(f"variables.{_missing(str(exc))}", _explain(exc)) from None
        except SecurityError as exc:
            raise TemplateProblem(name, f"not allowed in a template: {exc}") from None
        except TemplateSyntaxError as exc:
            raise TemplateProblem(name, f"line {exc.lineno}: {exc.message}") from None
        except TemplateProblem:
            raise
        except Exception as exc:  # whatever a template's own expressions raise is its fault
            reason = str(exc)[:200]
            raise TemplateProblem(name, f"cannot render: {type(exc).__name__}: {reason}") from None
        return "".join(pieces)

    def _env(self, name: str) -> ImmutableSandboxedEnvironment:
        return self._html if name == "html" else self._plain

    @staticmethod
    def _sources(parts: Parts) -> Iterable[tuple[str, str]]:
        yield "subject", parts.subject
        if parts.html is not None:
            yield "html", parts.html
        if parts.text is not None:
            yield "text", parts.text


def _missing(message: str) -> str:
    found = _UNDEFINED_NAME.search(message) or _MISSING_ATTRIBUTE.search(message)
    return found.group(1) if found else "?"


def _explain(exc: UndefinedError) -> str:
    name = _missing(str(exc))
    if name == "?":
        return f"a variable is missing: {exc}"
    return f"variable '{name}' is not given (the template uses it): {exc}"
