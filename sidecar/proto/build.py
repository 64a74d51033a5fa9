"""Regenerate the Python wire code from the ``.proto`` files in this folder.

Run ``python -m sidecar.proto.build`` after editing a ``.proto``; a test fails
when the committed stubs differ from what this produces.

The generated modules are rewritten to register their descriptors in a private
descriptor pool (``sidecar.proto.pool.POOL``) instead of protobuf's process-wide
default pool. Our messages share the package name ``inference`` with Triton's
own stubs (that is what makes us wire-compatible), so with the default pool a
process could not import both this server and ``tritonclient.grpc``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent
PROTOS = ("grpc_service.proto", "feedback.proto")
_DEFAULT_POOL = "_descriptor_pool.Default()"
_PRIVATE_POOL = "_private_pool.POOL"
_POOL_IMPORT = "from sidecar.proto import pool as _private_pool\n"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every proto into ``out_dir``/sidecar/proto; return the files made."""
    from grpc_tools import protoc  # dev dependency, imported only here

    for name in PROTOS:
        args = [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_DIR / name),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_DIR / name}")
    made = sorted((out_dir / "sidecar" / "proto").glob("*_pb2*.py*"))
    for path in made:
        if path.name.endswith("_pb2.py"):
            _use_private_pool(path)
    return made


def _use_private_pool(path: Path) -> None:
    text = path.read_text()
    if _DEFAULT_POOL not in text:
        raise RuntimeError(f"{path}: generated code no longer calls {_DEFAULT_POOL}")
    text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
    anchor = "from google.protobuf import symbol_database as _symbol_database\n"
    text = text.replace(anchor, anchor + _POOL_IMPORT, 1)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Regenerate in place, or with ``--check`` report stale stubs (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for made in generate(Path(tmp)):
            target = PROTO_DIR / made.name
            fresh = made.read_bytes()
            if not target.exists() or target.read_bytes() != fresh:
                stale.append(target)
                if not opts.check:
                    target.write_bytes(fresh)
    if opts.check and stale:
        print("stale generated stubs: " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
