#!/usr/bin/env python3
"""handover_check.py — reads what vitd hands to LLM engines the way the engines read it, and compares it with a
`vitd encode` reference bit for bit. Run by tests/test_handover_http.c; usable by hand:

  handover_check.py parts ANSWER.json REF.safetensors MAP [--grid auto|2d|1d] [--torch require|skip]
      ANSWER.json is a /v1/vllm/image_embeds answer; MAP says which reference image each part is ("0,3,1": part i
      is image.<MAP[i]> of REF, a `vitd encode --layout concat` file in the parts' dtype). Every part is decoded
      twice: by the reader below (ZIP records, CRC-32, pickle opcodes; standard library only, so the format is
      pinned where torch is absent) and, unless --torch skip, by torch.load(BytesIO(b64decode(s, validate=True)),
      weights_only=True).to_dense(), as vLLM does. Checks: strict base64, dtype, shape [T, W] with
      T = t*h*w/4 from the grid part, the bytes equal to the reference tensor, the grid equal to the reference's
      and shaped [1, 3] or (3,) as --grid says (auto: [1, 3] for one part, (3,) for several).
  handover_check.py cache DIR UUID REF.safetensors IMAGE [--torch require|skip]
      the EC cache file DIR/UUID/encoder_cache.safetensors: one tensor ec_cache, BF16, equal to image.<IMAGE> of REF
      (a bfloat16 concat reference); read by a safetensors reader written here and, where the package exists, by
      safetensors.torch.load_file, as vLLM's ECExampleConnector does.

Prints one line per check; exits 0 when all passed, 1 otherwise.
"""
import base64
import io
import json
import re
import struct
import sys
import zlib

FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)
    return ok


# ---- safetensors, by hand: u64 header length, JSON header, data ----

ST_SIZE = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack_from("<Q", buf, 0)
    header = json.loads(buf[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        count = 1
        for d in t["shape"]:
            count *= d
        assert e - b == count * ST_SIZE[t["dtype"]], name
        out[name] = (t["dtype"], t["shape"], buf[8 + n + b:8 + n + e])
    return out, header.get("__metadata__", {})


# ---- torch.save archives, by hand: the ZIP's central directory, then the pickle's opcodes ----

STORAGE_DTYPE = {"BFloat16Storage": "BF16", "HalfStorage": "F16", "FloatStorage": "F32", "LongStorage": "I64"}


def zip_entries(buf):
    end = buf.rfind(b"PK\x05\x06")
    n, cd_size, cd_off = struct.unpack_from("<HII", buf, end + 10)
    entries, at = {}, cd_off
    for _ in range(n):
        sig, method, crc, csize, usize, nl, xl, cl, lho = struct.unpack_from("<I6xH4xIIIHHH8xI", buf, at)
        assert sig == 0x02014B50 and method == 0 and csize == usize
        name = buf[at + 46:at + 46 + nl].decode()
        lsig, lcrc, lnl, lxl = struct.unpack_from("<I10xI8xHH", buf, lho)
        assert lsig == 0x04034B50 and lcrc == crc and lnl == nl
        start = lho + 30 + lnl + lxl
        data = buf[start:start + usize]
        assert zlib.crc32(data) == crc, name + ": CRC-32"
        entries[name] = data
        at += 46 + nl + xl + cl
    return entries


def unpickle_tensor(p):
    """The opcodes of a tensor pickle (protocol 2), interpreted on a stack; returns (storage, key, loc, numel,
    offset, shape, stride)."""
    assert p[:2] == b"\x80\x02", "protocol 2"
    i, stack = 2, []
    MARK = object()
    while True:
        op = p[i:i + 1]
        i += 1
        if op == b"c":
            j = p.index(b"\n", i)
            k = p.index(b"\n", j + 1)
            stack.append(("global", p[i:j].decode() + "." + p[j + 1:k].decode()))
            i = k + 1
        elif op == b"(":
            stack.append(MARK)
        elif op == b"X":
            (n,) = struct.unpack_from("<I", p, i)
            stack.append(p[i + 4:i + 4 + n].decode())
            i += 4 + n
        elif op in (b"K", b"M", b"J"):
            fmt, size = {b"K": ("<B", 1), b"M": ("<H", 2), b"J": ("<i", 4)}[op]
            stack.append(struct.unpack_from(fmt, p, i)[0])
            i += size
        elif op == b"t":
            m = len(stack) - 1 - stack[::-1].index(MARK)
            items = tuple(stack[m + 1:])
            del stack[m:]
            stack.append(items)
        elif op == b")":
            stack.append(())
        elif op == b"Q":
            stack.append(("persid", stack.pop()))
        elif op == b"\x89":
            stack.append(False)
        elif op == b"R":
            args = stack.pop()
            fn = stack.pop()
            assert fn[0] == "global"
            stack.append(("call", fn[1], args))
        elif op == b".":
            break
        else:
            raise ValueError("opcode %r is not a tensor pickle's" % op)
    (call,) = stack
    assert call[1] == "torch._utils._rebuild_tensor_v2", call[1]
    persid, offset, shape, stride, requires_grad, hooks = call[2]
    tag, storage, key, loc, numel = persid[1]
    assert tag == "storage" and storage[1].startswith("torch.") and requires_grad is False
    assert hooks[1] == "collections.OrderedDict"
    return storage[1][6:], key, loc, numel, offset, shape, stride


def read_archive(buf):
    e = zip_entries(buf)
    names = list(e)
    assert all(n.startswith("archive/") for n in names), names
    assert e["archive/version"].strip() == b"3" and e.get("archive/byteorder", b"little") == b"little"
    storage, key, loc, numel, offset, shape, stride = unpickle_tensor(e["archive/data.pkl"])
    data = e["archive/data/" + key]
    dtype = STORAGE_DTYPE[storage]
    assert loc == "cpu" and offset == 0 and len(data) == numel * ST_SIZE[dtype]
    want_stride, acc = [], 1
    for d in reversed(shape):
        want_stride.insert(0, acc)
        acc *= d
    assert list(stride) == want_stride, (stride, shape)
    return dtype, list(shape), data


def strict_b64(s):
    ok = isinstance(s, str) and re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", s) is not None and len(s) % 4 == 0
    check(ok, "strict base64 (standard alphabet, padded, one line)")
    return base64.b64decode(s, validate=True)


# ---- torch, where present ----

def torch_module(mode):
    if mode == "skip":
        print("skip torch: --torch skip")
        return None
    try:
        import torch  # noqa: F401
        print("torch %s" % torch.__version__)
        return torch
    except ImportError as e:
        check(False, "import torch (%s)" % e)
        return None


TORCH_BITS = {"BF16": ("bfloat16", "int16"), "F16": ("float16", "int16"), "F32": ("float32", "int32"),
              "I64": ("int64", "int64")}


def torch_load(torch, raw):
    t = torch.load(io.BytesIO(raw), weights_only=True)
    return t.to_dense()


def torch_bytes(torch, t, dtype):
    return t.contiguous().view(getattr(torch, TORCH_BITS[dtype][1])).numpy().tobytes()


# ---- modes ----

def check_parts(answer_path, ref_path, mapping, grid_layout, torch):
    answer = json.load(open(answer_path))
    ref, _ = read_safetensors(ref_path)
    parts = answer["content"]
    check(len(parts) == len(mapping), "%d parts for %d images" % (len(parts), len(mapping)))
    n = len(parts)
    for i, (part, j) in enumerate(zip(parts, mapping)):
        what = "part %d (reference image %d)" % (i, j)
        check(part.get("type") == "image_embeds" and isinstance(part.get("uuid"), str), what + ": type, uuid")
        ie = part["image_embeds"]
        check(set(ie) == {"image_embeds", "image_grid_thw"}, what + ": image_embeds and image_grid_thw only")
        emb_raw, grid_raw = strict_b64(ie["image_embeds"]), strict_b64(ie["image_grid_thw"])
        dtype, shape, data = read_archive(emb_raw)
        gdtype, gshape, gdata = read_archive(grid_raw)
        grid = struct.unpack("<3q", gdata)
        want_dtype, want_shape, want = ref["image.%d.embeddings" % j]
        _, _, ref_grid = ref["image.%d.grid_thw" % j]
        two_d = grid_layout == "2d" or (grid_layout == "auto" and n == 1)
        check(gdtype == "I64" and gshape == ([1, 3] if two_d else [3]), what + ": grid int64 %s" % gshape)
        check(grid == struct.unpack("<3q", ref_grid), what + ": grid %s" % (grid,))
        rows = grid[0] * grid[1] * grid[2] // 4
        check(shape == [rows, want_shape[1]] and shape == want_shape,
              what + ": shape %s, grid gives %d rows" % (shape, rows))
        check(dtype == want_dtype, what + ": dtype %s" % dtype)
        check(data == want, what + ": %d bytes equal to vitd encode (hand-written reader)" % len(data))
        if torch:
            t = torch_load(torch, emb_raw)
            g = torch_load(torch, grid_raw)
            check(str(t.dtype) == "torch." + TORCH_BITS[dtype][0] and list(t.shape) == want_shape,
                  what + ": torch %s %s" % (t.dtype, list(t.shape)))
            check(t.shape[0] == int(g.prod()) // 4, what + ": torch rows = grid.prod() / 4")
            check(g.dtype == torch.int64 and list(g.shape) == gshape, what + ": torch grid %s" % list(g.shape))
            check(torch_bytes(torch, t, dtype) == want, what + ": torch.load bits equal to vitd encode")


def check_cache(cache_dir, uuid, ref_path, image, torch):
    path = "%s/%s/encoder_cache.safetensors" % (cache_dir, uuid)
    got, meta = read_safetensors(path)
    ref, _ = read_safetensors(ref_path)
    want_dtype, want_shape, want = ref["image.%d.embeddings" % image]
    check(list(got) == ["ec_cache"], "%s: one tensor, ec_cache" % uuid)
    dtype, shape, data = got["ec_cache"]
    check(dtype == "BF16" and want_dtype == "BF16" and shape == want_shape, "%s: BF16 %s" % (uuid, shape))
    check(data == want, "%s: %d bytes equal to vitd encode (hand-written reader)" % (uuid, len(data)))
    if torch:
        try:
            from safetensors.torch import load_file
        except ImportError:
            print("skip safetensors.torch: the package is not installed here")
            return
        t = load_file(path)["ec_cache"]
        check(t.dtype == torch.bfloat16 and list(t.shape) == want_shape, "%s: safetensors.torch.load_file" % uuid)
        check(torch_bytes(torch, t, "BF16") == want, "%s: safetensors.torch bits equal" % uuid)


def main(argv):
    mode, grid = "require", "auto"
    if "--torch" in argv:
        k = argv.index("--torch")
        mode = argv[k + 1]
        del argv[k:k + 2]
    if "--grid" in argv:
        k = argv.index("--grid")
        grid = argv[k + 1]
        del argv[k:k + 2]
    torch = torch_module(mode)
    if argv[1] == "parts":
        check_parts(argv[2], argv[3], [int(x) for x in argv[4].split(",")], grid, torch)
    elif argv[1] == "cache":
        check_cache(argv[2], argv[3], argv[4], int(argv[5]), torch)
    else:
        raise SystemExit(__doc__)
    print("%d failed" % len(FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
