"""What a model file is, told from its bytes without unpickling anything.

A researcher's file can be many things: a state dict (``torch.save(model.state_dict())``, or the same in
safetensors), a TorchScript archive (``torch.jit.script(model).save``), a whole pickled model
(``torch.save(model)``), a training checkpoint, an ONNX or Keras file, or a failed download. :func:`sniff`
reads the file's header (and, for pickles, walks the pickle *opcodes* with :mod:`pickletools`, which
executes nothing) and returns a :class:`FileKind`, so every loader can say in one line what the file IS
and what to do, instead of relaying torch's advice to unpickle it.

=================  ===================================================================================
``kind``           the file is
=================  ===================================================================================
``state_dict``     a PyTorch pickle whose objects are only tensors, containers and numbers (safe to read
                   with ``weights_only=True``)
``safetensors``    a safetensors file (tensors by name; never code)
``torchscript``    a TorchScript archive: architecture and weights in one file (``torch.jit.load``)
``module``         a whole pickled ``nn.Module``: loading it runs code named by the file
``pickle``         a pickle of some other Python object (names a class outside torch's tensor types)
``empty``, ``html``, ``text``  an empty file, an HTML page (a failed or blocked download), JSON/text
``onnx``, ``hdf5``, ``npz``, ``zip``  another framework's or tool's file
``unknown``        none of these: truncated or corrupt
=================  ===================================================================================
"""

from __future__ import annotations

import io
import json
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

#: Globals a state-dict pickle may name (torch's own rebuild functions, storages, containers): anything
#: else makes the pickle a "module" or "pickle" kind. Prefixes of ``module.name``.
_TENSOR_GLOBALS = (
    "torch._utils.", "torch.storage.", "torch.serialization.", "torch.nn.parameter.Parameter",
    "torch._tensor._rebuild", "collections.OrderedDict", "torch.Size", "torch.device", "torch.dtype",
    "torch.BFloat16Storage", "torch.BoolStorage", "torch.ByteStorage", "torch.CharStorage", "torch.DoubleStorage",
    "torch.FloatStorage", "torch.HalfStorage", "torch.IntStorage", "torch.LongStorage", "torch.ShortStorage",
    "torch.float", "torch.half", "torch.bfloat16", "torch.int", "torch.long", "torch.bool", "torch.uint8",
    "torch.int8", "torch.int16", "torch.double", "torch.complex", "builtins.set", "builtins.frozenset",
    "builtins.slice", "builtins.complex", "_codecs.encode", "numpy.core.multiarray.scalar", "numpy.dtype",
    "numpy._core.multiarray.scalar", "torch._C._nn", "torch.Tensor", "builtins.tuple", "builtins.list",
)


@dataclass(frozen=True)
class FileKind:
    """What :func:`sniff` found: ``kind`` (see the module table), ``what`` (a phrase for messages, e.g.
    ``"a whole pickled nn.Module (class __main__.Net)"``), ``classes`` (the ``module.Name`` globals a pickle
    names, in order of first use) and ``size`` in bytes."""

    kind: str
    what: str
    size: int = 0
    classes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def root_class(self) -> str | None:
        """The class of a pickled object: the first global a pickle names that is not one of torch's tensor helpers."""
        return next((c for c in self.classes if not c.startswith(_TENSOR_GLOBALS)), None)


def sniff(path: Path) -> FileKind:
    """What the file at ``path`` is (see the module docstring); reads at most the header and the pickle of a
    torch archive (the tensor data are not read). An unreadable file is ``unknown`` with the OS error."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        return FileKind("unknown", f"unreadable ({exc.strerror or exc})")
    text = head.lstrip().lower()
    if size == 0:
        return FileKind("empty", "an empty file", 0)
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        return FileKind("html", "an HTML page, not a model file (a failed or blocked download?)", size)
    if _is_safetensors(head, size):
        return FileKind("safetensors", "a safetensors file (tensors by name)", size)
    if text.startswith((b"{", b"[")):
        return FileKind("text", "a JSON/text file, not a model file", size)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return FileKind("hdf5", "an HDF5 file (a Keras/TensorFlow model?), not a PyTorch model", size)
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        return _sniff_zip(path, size)
    if head[:1] == b"\x80":
        try:
            with open(path, "rb") as f:
                return _classify_pickle(f.read(min(size, 64 << 20)), size, legacy=True)
        except OSError as exc:
            return FileKind("unknown", f"unreadable ({exc.strerror or exc})", size)
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and (b"pytorch" in head[:64] or b"onnx" in head[:64].lower())):
        return FileKind("onnx", "an ONNX model, not a PyTorch model", size)
    return FileKind("unknown", f"truncated or corrupt ({size:,} bytes)", size)


def _is_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON starting with ``{``."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if not (2 <= n <= size - 8) or head[8:9] != b"{":
        return False
    if n + 8 <= len(head):
        try:
            json.loads(head[8:8 + n])
        except ValueError:
            return False
    return True


def _sniff_zip(path: Path, size: int) -> FileKind:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return FileKind("torchscript", "a TorchScript archive (architecture and weights in one file)", size)
            pkl = next((n for n in names if n.endswith("data.pkl")), None)
            if pkl is not None:
                return _classify_pickle(z.read(pkl), size, legacy=False)
            if names and all(n.endswith(".npy") for n in names):
                return FileKind("npz", "a NumPy .npz archive (data, not a model)", size)
            return FileKind("zip", f"a zip archive that is not a PyTorch file ({len(names)} members, e.g. {names[:1]})", size)
    except (zipfile.BadZipFile, OSError, KeyError, EOFError, ValueError):
        return FileKind("unknown", f"truncated or corrupt ({size:,} bytes)", size)


def _classify_pickle(data: bytes, size: int, *, legacy: bool) -> FileKind:
    """Walk the opcodes of the pickle(s) in ``data`` (a legacy ``torch.save`` file holds several in a row)."""
    classes: list[str] = []
    strings: set[str] = set()
    stream = io.BytesIO(data)
    complete = False
    top = None  # the first opcode that builds the saved object: GLOBAL (an instance) or EMPTY_DICT (a dict), ...
    for i in range(5 if legacy else 1):  # legacy torch.save: magic, protocol, sys info, the object, storage keys
        try:
            recent: list[str] = []
            memo: dict[int, str] = {}
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if top is None and i == (3 if legacy else 0) and name in _BUILDERS:
                    top = name
                if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"):
                    recent.append(str(arg))
                    strings.add(str(arg))
                elif name in ("BINPUT", "LONG_BINPUT", "PUT") and recent:
                    memo[int(arg)] = recent[-1]
                elif name == "MEMOIZE" and recent:
                    memo[len(memo)] = recent[-1]
                elif name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                    recent.append(memo[int(arg)])
                elif name in ("GLOBAL", "INST"):
                    _add(classes, str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(recent) >= 2:
                    _add(classes, f"{recent[-2]}.{recent[-1]}")
            complete = True
        except Exception:  # noqa: BLE001 -- the end of the pickles (binary storage data) or a damaged file
            break
        if stream.tell() >= len(data):
            break
    if not complete and not classes:
        return FileKind("unknown", f"truncated or corrupt ({size:,} bytes)", size)
    kind = FileKind("state_dict", "a PyTorch state dict or checkpoint (tensors only)", size, tuple(classes))
    root = kind.root_class
    if root is None:
        return kind
    instance = top in ("GLOBAL", "STACK_GLOBAL", "INST")
    if {"_modules", "_parameters"} <= strings:
        what = (f"a whole pickled nn.Module (class {root}, saved with torch.save(model))" if instance else
                f"a checkpoint holding a whole pickled nn.Module (class {root})")
        return FileKind("module", what, size, tuple(classes))
    what = (f"a pickled Python object (class {root}), not a state dict" if instance else
            f"a checkpoint that holds Python objects besides tensors ({', '.join(c for c in classes if not c.startswith(_TENSOR_GLOBALS))[:120]})")
    return FileKind("pickle", what, size, tuple(classes))


#: Opcodes that start building an object: the first of them in the saved object's pickle says what it is.
_BUILDERS = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "EMPTY_DICT", "DICT", "EMPTY_LIST", "LIST"})


def _add(out: list[str], name: str) -> None:
    if name not in out:
        out.append(name)
