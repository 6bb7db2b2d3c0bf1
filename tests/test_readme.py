"""The README's library example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"## Library.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its '## Library' python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "proxy-set test accuracy:" in out and "spearman_all" in out
    assert (tmp_path / "results" / "digits-dm.safetensors").exists()
    assert (tmp_path / "results" / "proxynas.db").exists()
