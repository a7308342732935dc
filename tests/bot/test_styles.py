from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import InvalidRequest
from bot.styles import Style, StyleBook, StylesUnavailable, load_style_book

EXAMPLE = Path(__file__).resolve().parents[2] / "styles.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "styles.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_file_loads() -> None:
    book = load_style_book(EXAMPLE)
    assert [style.name for style in book] == ["watercolor", "cinematic", "pixel-art"]
    assert book.get("pixel-art").lora == "nerijs/pixel-art-xl" and book.get("pixel-art").weight == 0.8


def test_templates_wrap_the_prompt_and_join_negatives() -> None:
    style = Style(name="ink", description="Ink", template="ink drawing of {prompt}", negative="colour")
    assert style.apply("a fox", None) == ("ink drawing of a fox", "colour")
    assert style.apply("a fox", "blurry") == ("ink drawing of a fox", "blurry, colour")


def test_lookup_and_autocomplete(tmp_path: Path) -> None:
    book = StyleBook([Style(name="ink", description="Black ink"), Style(name="oil", description="Oil painting")])
    assert book.get(" INK ").name == "ink"
    assert [style.name for style in book.matching("paint")] == ["oil"]
    with pytest.raises(InvalidRequest, match="ink, oil"):
        book.get("neon")


def test_example_images_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[style]]\nname = "ink"\ndescription = "Ink"\nexample = "examples/ink.png"\n')
    assert load_style_book(path).get("ink").example == tmp_path / "examples" / "ink.png"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[style]\nname=", "not valid TOML"),
        ('[[style]]\nname = "ink"\ndescription = "Ink"\ntemplate = "no slot"\n', "template"),
        ('[[style]]\nname = "Bad Name"\ndescription = "x"\n', "name"),
        ('[[style]]\nname = "ink"\ndescription = "x"\nweight = 5\n', "weight"),
        (
            f'[[style]]\nname = "ink"\ndescription = "x"\nnegative = "{"n" * 301}"\n',
            "negative: String should have at most 300",
        ),
        ('[[style]]\nname = "ink"\ndescription = "x"\n[[style]]\nname = "ink"\ndescription = "y"\n', "share a name"),
        ('style = "ink"\n', "[[style]] tables"),
    ],
)
def test_a_broken_file_is_one_line_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(StylesUnavailable) as raised:
        load_style_book(write(tmp_path, text))
    message = str(raised.value)
    assert problem in message and "\n" not in message and message.startswith("STYLES_FILE=")


def test_no_file_set_means_no_styles_and_a_missing_one_is_reported(tmp_path: Path) -> None:
    assert len(load_style_book(None)) == 0
    with pytest.raises(StylesUnavailable, match="cannot read it"):
        load_style_book(tmp_path / "missing.toml")
