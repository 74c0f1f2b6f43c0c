"""Writing generated files (Kubernetes manifests, shard configs) that are committed and checked
for staleness by tests."""

from __future__ import annotations

from pathlib import Path


def write_files(out_dir: Path, files: dict[str, str], pattern: str) -> list[Path]:
    """Write `files` (name -> text) into out_dir and remove the files matching `pattern` there
    that are no longer produced, so a renamed output does not linger beside its successor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(pattern):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
