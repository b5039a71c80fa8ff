"""The committed generated code matches what `make proto` produces now."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_generated_python_is_not_stale(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generate.generate(tmp_path)}
    committed_root = REPO / "gen" / "python"
    committed = {
        p.relative_to(committed_root): p.read_bytes()
        for p in committed_root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(committed), "files differ: run `make proto`"
    stale = [str(name) for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"stale generated files (run `make proto`): {stale}"


def test_generated_typescript_is_not_stale(tmp_path: Path) -> None:
    """clients/web/src/gen is what protoc-gen-es (clients/web's pinned one) makes of proto/."""
    buf = REPO / "tools" / "node_modules" / ".bin" / "buf"
    plugin = REPO / "clients" / "web" / "node_modules" / ".bin" / "protoc-gen-es"
    if not (buf.exists() and plugin.exists()):
        pytest.skip("needs `make tools` and `make web` (buf and protoc-gen-es)")
    subprocess.run(
        [str(buf), "generate", "--template", "proto/buf.gen.web.yaml", "-o", str(tmp_path)],
        cwd=REPO,
        check=True,
    )
    out = tmp_path / "clients" / "web" / "src" / "gen"
    committed_root = REPO / "clients" / "web" / "src" / "gen"
    fresh = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(committed_root): p.read_bytes()
        for p in committed_root.rglob("*")
        if p.is_file()
    }
    assert fresh == committed, "clients/web/src/gen is stale: run `make proto`"
