from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.__main__ import main


def test_imagine_writes_pngs_with_metadata(env_for, tmp_path: Path, capsys, buckets) -> None:
    env_for()
    status = main(
        ["imagine", "a red fox", "--aspect", "16:9", "--seed", "7", "--count", "2", "--steps", "2", "-o", str(tmp_path)]
    )
    assert status == 0
    for seed in (7, 8):
        with Image.open(tmp_path / f"{seed}.png") as png:
            assert png.size == buckets["16:9"]
            assert png.text["prompt"] == "a red fox" and png.text["seed"] == str(seed)
            assert png.text["steps"] == "2"
    assert "2 image(s)" in capsys.readouterr().out


def test_imagine_reports_a_bad_option_in_one_line(env_for, tmp_path: Path, capsys) -> None:
    env_for()
    assert main(["imagine", "a fox", "--steps", "20", "-o", str(tmp_path)]) == 1
    assert "`steps` must be between 1 and 8" in capsys.readouterr().err


def test_bad_setting_is_one_line_and_exit_2(env_for, capsys) -> None:
    env_for(BASE_RESOLUTION="abc")
    assert main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lcm-bot: invalid settings: BASE_RESOLUTION") and err.count("\n") == 1


def test_missing_weights_are_one_line(env_for, capsys, tmp_path: Path) -> None:
    env_for(MODEL_UNET=str(tmp_path / "missing"))
    assert main(["imagine", "a fox", "-o", str(tmp_path)]) == 1
    assert "MODEL_UNET=" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("token", "verdict"),
    [
        ("MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789", "[ok] DISCORD_TOKEN"),
        ("not-a-token", "[FAIL] DISCORD_TOKEN"),
    ],
)
def test_doctor_checks_everything(env_for, capsys, token: str, verdict: str) -> None:
    env_for(DISCORD_TOKEN=token)
    status = main(["doctor"])
    out = capsys.readouterr().out
    assert "[ok] device: CPU" in out
    assert "[ok] MODEL_BASE: local folder" in out and "[ok] MODEL_UNET: local folder" in out
    assert "[ok] DATABASE_PATH" in out
    assert verdict in out
    assert status == (0 if verdict.startswith("[ok]") else 1)


def test_doctor_checks_the_optional_models_only_when_set(env_for, capsys, tmp_path: Path) -> None:
    env_for()
    main(["doctor"])
    assert "MODEL_TINY_VAE" not in capsys.readouterr().out
    env_for(MODEL_TINY_VAE=str(tmp_path))  # a folder without a model in it
    assert main(["doctor"]) == 1
    assert f"[FAIL] MODEL_TINY_VAE: local folder {tmp_path} has no config.json" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("compile_setting", "folder", "verdict"),
    [
        ("off", "compile-cache", None),
        ("on", "compile-cache", "[ok] COMPILE_CACHE_DIR"),
        ("on", "a-file/compile-cache", "[FAIL] COMPILE_CACHE_DIR"),
    ],
)
def test_doctor_checks_the_compile_cache_folder_where_the_bot_compiles(
    env_for,
    capsys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compile_setting: str,
    folder: str,
    verdict: str | None,
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "a-file").write_text("")
    env_for(COMPILE=compile_setting, COMPILE_CACHE_DIR=str(tmp_path / folder))
    main(["doctor"])
    out = capsys.readouterr().out
    if verdict is None:
        assert "COMPILE_CACHE_DIR" not in out
    else:
        assert f"{verdict}: {tmp_path / folder}" in out
