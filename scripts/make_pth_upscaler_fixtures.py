#!/usr/bin/env python3
"""Writes tests/data/upscalers/pth/: `.pth`/`.pt` upscaler files hiresfix reads in place.

  compact-x4-legacy.pt   tests/data/upscalers/models/compact-x4.safetensors saved with torch's
                         legacy (pre-1.6, non-zip) format: torch.save(..., _use_new_zipfile_serialization=False)

and torch-zip-shaped `.pth` upscaler files whose pickle would create a marker file when unpickled — the path in $HIRESFIX_TEST_MARKER — so a test can put
them in an upscaler folder, list and use them through hiresfix, and assert the marker was
never made (nothing the pickle names ran).

  marker-os-system.pth   {'conv_first.weight': os.system('touch "$HIRESFIX_TEST_MARKER"')}
                         (protocol 2, GLOBAL, REDUCE inside the state dict, as torch.save writes)
  marker-eval.pth        builtins.eval("open(__import__('os').environ['HIRESFIX_TEST_MARKER'], 'w')")
                         (protocol 4, STACK_GLOBAL, REDUCE at the top level)

The script proves each payload is live: it unpickles each data.pkl with Python's own pickle
in a scratch folder with the variable set and asserts the marker appears (and removes it).
The hostile files are byte-identical on a rerun; the legacy file's storage keys are object ids,
so its bytes differ per run (its tensors do not; the script checks them). Needs torch (2.11.0) and safetensors for
the legacy file; the hostile ones only the standard library.
"""
import os
import pickle
import struct
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "upscalers", "pth")
VAR = "HIRESFIX_TEST_MARKER"


def binunicode(s):  # protocol 2 'X'
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def short_binunicode(s):  # protocol 4 '\x8c'
    b = s.encode()
    assert len(b) < 256
    return b"\x8c" + bytes([len(b)]) + b


def pickles():
    os_system = (
        b"\x80\x02}("  # PROTO 2, EMPTY_DICT, MARK
        + binunicode("conv_first.weight")
        + b"cos\nsystem\n"  # GLOBAL os.system
        + binunicode('touch "$%s"' % VAR)
        + b"\x85Ru."  # TUPLE1, REDUCE, SETITEMS, STOP
    )
    builtins_eval = (
        b"\x80\x04"
        + short_binunicode("builtins")
        + short_binunicode("eval")
        + b"\x93"  # STACK_GLOBAL builtins.eval
        + short_binunicode("open(__import__('os').environ['%s'], 'w')" % VAR)
        + b"\x85R."  # TUPLE1, REDUCE, STOP
    )
    return {"marker-os-system.pth": os_system, "marker-eval.pth": builtins_eval}


def entry(name):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    return info


def prove_live(pkl):
    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "ran")
        os.environ[VAR] = marker
        try:
            pickle.loads(pkl)  # the payload runs here, on purpose, in a scratch folder
        except Exception:
            pass
        assert os.path.exists(marker), "payload did not run"
        del os.environ[VAR]


def write_legacy():
    import torch
    from safetensors.torch import load_file

    state = load_file(os.path.join(ROOT, "tests", "data", "upscalers", "models", "compact-x4.safetensors"))
    path = os.path.join(OUT, "compact-x4-legacy.pt")
    torch.save(state, path, _use_new_zipfile_serialization=False)
    back = torch.load(path, weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    print("wrote", path)


def main():
    os.makedirs(OUT, exist_ok=True)
    write_legacy()
    for name, pkl in pickles().items():
        prove_live(pkl)
        archive = name[: -len(".pth")]
        with zipfile.ZipFile(os.path.join(OUT, name), "w") as z:
            z.writestr(entry(archive + "/data.pkl"), pkl)
            z.writestr(entry(archive + "/byteorder"), b"little")
            z.writestr(entry(archive + "/version"), b"3\n")
        print("wrote", os.path.join(OUT, name))


if __name__ == "__main__":
    main()
