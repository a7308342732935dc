"""The compile cache folder: the one the settings name, unless the operator named another, and a harmless log
line where it cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.engine.compile_cache import use_compile_cache


@pytest.mark.parametrize("operator_choice", [None, "operators-cache"])
def test_the_compile_cache_is_where_settings_say_unless_the_operator_chose(
    operator_choice: str | None, tmp_path: Path
) -> None:
    # In a process of its own, as the bot starts: importing diffusers first sets torch's default folder.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import diffusers\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
        "from bot.engine.compile_cache import use_compile_cache\n"
        "use_compile_cache(Path(sys.argv[1]))\n"
        "print(cache_dir())\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    if operator_choice:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / operator_choice)
    command = [sys.executable, "-c", script, str(tmp_path / "settings-cache")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path / (operator_choice or "settings-cache"))


def test_a_compile_cache_folder_that_cannot_be_written_is_logged_and_torch_s_own_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored afterwards, whatever the call sets
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    use_compile_cache(in_the_way / "compile-cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(Path(default_cache_dir()).resolve())
    assert f"the compile cache folder {in_the_way / 'compile-cache'} cannot be written" in caplog.text
