"""``stepwatch comfyui-install COMFYUI_DIR``: make a ComfyUI load stepwatch's nodes.

It writes one small package, ``custom_nodes/stepwatch_nodes/__init__.py``, that re-exports
:func:`stepwatch.server.comfyui.nodes.comfy_entrypoint`; the nodes' code stays in the installed
``stepwatch`` distribution, so upgrading stepwatch upgrades the nodes. ComfyUI's own Python must
have stepwatch installed (``python -m pip install stepwatch`` with that Python, or
``--editable`` from a checkout). The shim's folder is not called ``stepwatch`` because ComfyUI
registers each custom node folder under its name in ``sys.modules``, which would hide the real
package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHIM_DIR = "stepwatch_nodes"
SHIM = '''"""stepwatch's ComfyUI nodes, written by `stepwatch comfyui-install`.

The nodes' code is in the installed stepwatch distribution.
"""

from stepwatch.server.comfyui.nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
'''
_MARK = "written by `stepwatch comfyui-install`"


class InstallError(Exception):
    """The folder is not a ComfyUI, or the shim's place is taken by something else."""


def install(comfyui_dir: Path) -> Path:
    """Write the shim into ``comfyui_dir``'s ``custom_nodes`` and return its path."""
    custom_nodes = comfyui_dir / "custom_nodes"
    if not custom_nodes.is_dir():
        raise InstallError(f"{comfyui_dir} is not a ComfyUI folder: it has no custom_nodes/")
    shim = custom_nodes / SHIM_DIR / "__init__.py"
    if shim.parent.exists() and not (shim.is_file() and _MARK in shim.read_text()):
        raise InstallError(
            f"{shim.parent} exists and was not written by stepwatch; remove it first"
        )
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(SHIM)
    return shim


def comfyui_install(parser: argparse.ArgumentParser) -> None:
    """Install stepwatch's nodes into a ComfyUI (a shim in its custom_nodes/)."""
    parser.add_argument("comfyui_dir", type=Path, help="the ComfyUI folder (holds main.py)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        shim = install(args.comfyui_dir)
    except (InstallError, OSError) as exc:
        print(f"stepwatch comfyui-install: {exc}")
        return 1
    print(f"wrote {shim}; restart ComfyUI (its Python needs stepwatch installed)")
    return 0
