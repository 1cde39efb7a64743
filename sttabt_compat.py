"""Import-time compatibility for a CPU torch next to a CUDA-built torchvision.

The registry's torchvision wheel is built against CUDA torch. On a CPU build of torch its compiled
extension (``torchvision/_C.so``) fails to load, the operator schemas it would define never exist, and
``import torchvision`` (so ``import timm`` and many ``transformers`` imports) dies with
``operator torchvision::nms does not exist`` while registering meta kernels.

:func:`ensure_torchvision_ops` first tries to load the real extension, so a working torchvision is left
alone. Only when that fails does it define the two schemas torchvision's Python side registers kernels
for (``nms`` and ``qnms``). The operators then exist without an implementation: calling them raises,
which is fine because nothing here uses detection ops.

``sttabt`` and ``ltp_nlp`` call it before anything imports torchvision. So that ``import timm`` also
works *before* them, ``python -m sttabt_compat --install-pth`` (run by ``make install``) writes a
``.pth`` file that installs :class:`_TorchvisionHook`, which runs the fix the first time torchvision is
imported. This module imports nothing heavy at load time, so the ``.pth`` costs nothing at start-up.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
PTH_NAME = "sttabt_compat.pth"
_state = {"how": None, "library": None}  # the schema library must live as long as the process


def _has_op(torch, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision_ops() -> str:
    """Make ``import torchvision`` work; return how: ``"native"``, ``"schemas"`` or ``"absent"``."""
    if _state["how"] is not None:
        return _state["how"]
    import torch

    how = "absent"
    spec = importlib.util.find_spec("torchvision")
    if _has_op(torch, "nms"):
        how = "native"
    elif spec is not None and spec.submodule_search_locations:
        how = "schemas"
        for folder in spec.submodule_search_locations:
            lib = os.path.join(folder, "_C.so")
            if not os.path.exists(lib):
                continue
            try:
                torch.ops.load_library(lib)
            except (OSError, RuntimeError):
                break  # a CUDA build next to CPU torch: define the schemas below
            if _has_op(torch, "nms"):
                how = "native"
        if how == "schemas":
            library = torch.library.Library("torchvision", "FRAGMENT")
            for schema in _SCHEMAS:
                if not _has_op(torch, schema.split("(")[0]):
                    library.define(schema)
            _state["library"] = library
    _state["how"] = how
    return how


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_ops` just before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" and _state["how"] is None:
            sys.meta_path.remove(self)
            ensure_torchvision_ops()
        return None  # let the normal finders import it


def install_import_hook() -> None:
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def install_pth() -> str:
    """Write the start-up hook into this interpreter's site-packages; return its path."""
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
    with open(path, "w") as f:
        f.write("import sttabt_compat; sttabt_compat.install_import_hook()\n")
    return path


if __name__ == "__main__":
    if sys.argv[1:] == ["--install-pth"]:
        print(f"wrote {install_pth()}")
    else:
        print(f"torchvision ops: {ensure_torchvision_ops()}")
