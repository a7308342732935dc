"""Named styles from `STYLES_FILE` (TOML): a prompt template, an optional negative, an optional LoRA adapter.

A server owner edits this file, so a mistake in it must never stop the bot: `load_style_book` raises
`StylesUnavailable` with one line naming the problem, and the caller runs on without styles.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.errors import InvalidRequest

PROMPT_SLOT = "{prompt}"
AUTOCOMPLETE_CHOICES = 25  # Discord shows at most 25 suggestions
TEMPLATE_MAX_CHARS = 300


class StylesUnavailable(Exception):
    """The styles file cannot be used; the message is one line for the log."""


class Style(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    description: str = Field(min_length=1, max_length=100)
    # /styles shows the template in an embed field; with these caps ten styles fit one message's embed limits
    template: str = Field(default=PROMPT_SLOT, max_length=TEMPLATE_MAX_CHARS)
    negative: str | None = Field(default=None, max_length=TEMPLATE_MAX_CHARS)
    lora: str | None = None  # a hub id, a folder or a .safetensors file in the diffusers LoRA format
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    example: Path | None = None  # an image shown by /styles

    @field_validator("template")
    @classmethod
    def _has_prompt_slot(cls, template: str) -> str:
        if template.count(PROMPT_SLOT) != 1:
            raise ValueError(f"must contain {PROMPT_SLOT} exactly once")
        return template

    def apply(self, prompt: str, negative: str | None) -> tuple[str, str | None]:
        """The prompt inside the template; the style's negative joined to the user's."""
        negatives = [part for part in (negative, self.negative) if part]
        return self.template.replace(PROMPT_SLOT, prompt), ", ".join(negatives) or None


class StyleBook:
    """The usable styles, by name."""

    def __init__(self, styles: list[Style] | None = None) -> None:
        self.styles = {style.name: style for style in styles or []}

    def __len__(self) -> int:
        return len(self.styles)

    def __iter__(self):
        return iter(self.styles.values())

    def get(self, name: str) -> Style:
        style = self.styles.get(name.strip().lower())
        if style is None:
            known = ", ".join(self.styles) or "none are set up on this bot"
            raise InvalidRequest(f"There is no style called `{name}`. Styles: {known}.")
        return style

    def matching(self, text: str) -> list[Style]:
        """Styles whose name or description contains `text`, for autocomplete."""
        needle = text.strip().lower()
        found = [style for style in self if needle in style.name or needle in style.description.lower()]
        return found[:AUTOCOMPLETE_CHOICES]

    def without(self, names: set[str]) -> StyleBook:
        return StyleBook([style for style in self if style.name not in names])


def load_style_book(path: Path | None) -> StyleBook:
    if path is None:
        return StyleBook()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StylesUnavailable(f"STYLES_FILE={path}: cannot read it ({exc.strerror or exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise StylesUnavailable(f"STYLES_FILE={path}: not valid TOML ({exc}).") from None
    entries = data.get("style", [])
    if not isinstance(entries, list):
        raise StylesUnavailable(f"STYLES_FILE={path}: styles are [[style]] tables.")
    styles = []
    for number, entry in enumerate(entries, start=1):
        try:
            style = Style.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
            raise StylesUnavailable(f"STYLES_FILE={path}: style #{number}: {problems}.") from None
        if style.example is not None and not style.example.is_absolute():
            style = style.model_copy(update={"example": path.parent / style.example})
        styles.append(style)
    names = [style.name for style in styles]
    if len(set(names)) != len(names):
        raise StylesUnavailable(f"STYLES_FILE={path}: two styles share a name.")
    return StyleBook(styles)
