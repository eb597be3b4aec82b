"""Check a V4 checkpoint's tensors and tokenizer against the INSTALLED vLLM's own DeepSeek-V4 code.

    python tests/v4_vllm_check.py CKPT_DIR OUT.json        # a written checkpoint (headers + tokenizer)
    python tests/v4_vllm_check.py --shape flash OUT.json   # a planned one (v4ckpt.layout), nothing written

Run in its own process (tests/test_tiny_v4_vllm.py): it initialises vLLM's distributed state.

How: vLLM's model class for DeepseekV4ForCausalLM (its registry) is built on the meta device from the
checkpoint's config without quantization_config, so every module creates its parameters with their
logical shapes (no FP8/MXFP4 kernel has to exist on this CPU). Then vLLM's own load_weights runs with
an empty CPU tensor per checkpoint tensor: its WeightsMapper renames, its stacked/expert tables route,
its weight loaders narrow and copy (shape errors raise). A recorder around each parameter's
weight_loader notes every piece loaded, so exact sizes are checked too (a TP narrow would accept a
tensor too large). Quantization artefacts follow the config's format rules: FP8 .scale = weight shape
/ 128 (ceil), MXFP4 experts = two values per I8 byte with one scale per 32. The GPU class's mapper and
stacking table are compared with the ones exercised here.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import os
import re
import struct
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXPERT_RE = re.compile(r"\.experts\.(\d+)\.w[123]\.")


def read_tensors(ckpt: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        out.update({k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()})
    return out


def planned(shape: str):
    from dsv4serve.weights.v4ckpt import layout, spec, tokenizer

    s = spec.get_spec(shape)
    ids = (tokenizer.token_id(s.vocab_size, t) for t in (tokenizer.BOS, tokenizer.EOS))
    cfg = spec.model_config(s, *ids)
    tensors = {t.name: (t.dtype, t.shape) for group in layout.parts(s).values() for t in group}
    return cfg, tensors


_CONFIGS: dict[str, object] = {}


def build_model(cfg: dict):
    """vLLM's DeepSeek-V4 model for this platform, on the meta device, unquantized, TP 1."""
    import torch
    from vllm.model_executor.models import ModelRegistry
    from vllm.utils.torch_utils import set_default_torch_dtype

    key = json.dumps(cfg, sort_keys=True)
    if key not in _CONFIGS:
        _CONFIGS[key] = _vllm_config(cfg)
    vllm_config = _CONFIGS[key]
    vllm_config.compilation_config.static_forward_context.clear()  # attention layers register here
    cls, _ = ModelRegistry.resolve_model_cls(vllm_config.model_config.architectures, vllm_config.model_config)
    # The V4 attention module makes CUDA events in __init__ (even in vLLM's CPU build), which torch's CPU
    # wheel refuses to construct. Nothing runs here, so an inert stand-in suffices.
    torch.cuda.Event = _NoEvent
    with set_default_torch_dtype(torch.bfloat16), torch.device("meta"):
        return cls(vllm_config=vllm_config)


def _vllm_config(cfg: dict):
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs

    plain = {k: v for k, v in cfg.items() if k != "quantization_config"}
    folder = tempfile.mkdtemp()
    Path(folder, "config.json").write_text(json.dumps(plain))
    args = EngineArgs(model=folder, skip_tokenizer_init=True, load_format="dummy", enforce_eager=True)
    args.max_model_len, args.dtype = 4096, "bfloat16"
    vllm_config = args.create_engine_config()
    context = set_current_vllm_config(vllm_config)
    context.__enter__()  # held for the life of this process
    init_distributed_environment(
        world_size=1,
        rank=0,
        local_rank=0,
        distributed_init_method=f"file://{tempfile.mktemp()}",
        backend="gloo",
    )
    initialize_model_parallel(1, 1)
    return vllm_config


class _NoEvent:
    def __init__(self, *args, **kwargs) -> None:
        pass


def record_loads(model) -> dict[str, list]:
    """Wrap every parameter's weight_loader so each loaded piece is noted (the real loader still runs)."""
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    seen: dict[str, list] = defaultdict(list)
    for name, param in model.named_parameters():
        original = getattr(param, "weight_loader", default_weight_loader)

        def recorder(p, loaded, *args, _name=name, _original=original, **kw):
            shard = kw.get("shard_id", args[0] if args and not isinstance(args[0], str) else None)
            if args and isinstance(args[0], str):  # experts: (param, weight, weight_name, shard_id=, ...)
                shard = kw.get("shard_id")
            seen[_name].append((shard, kw.get("expert_id"), tuple(loaded.shape), str(loaded.dtype)))
            return _original(p, loaded, *args, **kw)

        param.weight_loader = recorder
    return seen


def stacking_table(cls) -> list:
    """The stacked_params_mapping literal inside <model class>.model_cls.load_weights (vLLM's source)."""
    tree = ast.parse(inspect.getsource(cls.model_cls.load_weights).lstrip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "stacked_params_mapping":
            return [list(t) for t in ast.literal_eval(node.value)]
    return []


def check(cfg: dict, tensors: dict) -> dict:
    import torch
    import vllm

    problems: list[str] = []
    model = build_model(cfg)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    seen = record_loads(model)
    torch_dtype = {"BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}

    # Feed everything but the scales; FP8 weights as their own dtype, MXFP4 experts at logical width.
    def logical(dtype: str, shape: tuple[int, ...]):
        if dtype == "I8":
            return torch.empty((shape[0], shape[1] * 2), dtype=torch.bfloat16)
        return torch.empty(shape, dtype=torch_dtype.get(dtype, torch.float8_e4m3fn))

    fed = [n for n in sorted(tensors) if not n.endswith(".scale")]
    try:  # a generator: the flash shape's tensors exist one at a time
        model.load_weights((n, logical(*tensors[n])) for n in fed)
    except Exception as err:  # noqa: BLE001 - any loader failure is the finding
        problems.append(f"vLLM's load_weights failed: {type(err).__name__}: {err}")

    mapper = type(model).hf_to_vllm_mapper
    dropped = [n for n in fed if mapper._map_name(n) is None]
    for name, param in params.items():
        pieces = seen.get(name, [])
        owner = modules.get(name.rpartition(".")[0])
        if name.endswith(("w13_weight", "w2_weight")):
            experts, rows, cols = param.shape
            want = {
                (s, e): ((rows // 2, cols) if s in ("w1", "w3") else (rows, cols))
                for e in range(experts)
                for s in (("w1", "w3") if "w13" in name else ("w2",))
            }
            got = {(s, e): shape for s, e, shape, _ in pieces}
            if got != want or len(pieces) != len(want):
                bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:4]
                problems.append(f"{name}: experts loaded {[(k, got.get(k), want.get(k)) for k in bad]}")
        elif name.endswith("attn_sink"):
            continue  # copied by slicing, without a weight loader: checked against the heads below
        elif not pieces:
            problems.append(f"{name} {tuple(param.shape)}: never loaded")
        elif getattr(owner, "output_sizes", None) and len(owner.output_sizes) > 1:  # stacked (fused)
            got = sorted((s, shape) for s, _, shape, _ in pieces)
            want = [(i, (size, param.shape[1])) for i, size in enumerate(owner.output_sizes)]
            if got != want:
                problems.append(f"{name}: stacked pieces {got}, vLLM wants {want}")
        else:
            (shard, _, shape, dtype), *more = pieces
            vocab = name.endswith(("embed_tokens.weight", "lm_head.weight"))
            ok = shape == tuple(param.shape) or (
                vocab and shape[1:] == param.shape[1:] and shape[0] <= param.shape[0]
            )
            if more or not ok:
                problems.append(
                    f"{name}: loaded {[p[2] for p in pieces]}, vLLM's parameter is {tuple(param.shape)}"
                )
            float_ckpt = dtype in ("torch.bfloat16", "torch.float32")
            if float_ckpt and param.dtype.is_floating_point and str(param.dtype) != dtype:
                problems.append(f"{name}: checkpoint {dtype}, vLLM keeps {param.dtype}")
    heads = cfg["num_attention_heads"]
    for name, (_, shape) in tensors.items():
        if name.endswith("attn_sink") and shape != (heads,):
            problems.append(f"{name}: {shape}, expected ({heads},)")
    problems += scale_problems(cfg, tensors, gpu_mapper())
    problems += gpu_path_problems(type(model), gpu_mapper(), [n for n in tensors])
    return {
        "vllm": vllm.__version__,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "params": len(params),
        "tensors": len(tensors),
        "dropped_by_mapper": len(dropped),
        "problems": problems,
    }


def gpu_mapper():
    from vllm.models.deepseek_v4.nvidia import model as nvidia

    return nvidia.DeepseekV4ForCausalLM.hf_to_vllm_mapper


def scale_problems(cfg: dict, tensors: dict, mapper) -> list[str]:
    """Quantization artefacts, by the formats config.json declares (FP8 128x128 blocks, MXFP4 1x32)."""
    out = []
    block = cfg["quantization_config"]["weight_block_size"]
    for name, (dtype, shape) in sorted(tensors.items()):
        if not name.endswith(".scale"):
            continue
        wdtype, wshape = tensors.get(name[: -len(".scale")] + ".weight", (None, ()))
        mapped = mapper._map_name(name) or ""
        if EXPERT_RE.search(name):
            want, suffix = (wshape[0], wshape[1] * 2 // 32) if wshape else None, ".weight_scale"
            ok_dtype = wdtype == "I8"
        else:
            want = tuple(math.ceil(d / b) for d, b in zip(wshape, block, strict=False)) if wshape else None
            suffix, ok_dtype = ".weight_scale_inv", wdtype == "F8_E4M3"
        if dtype != "F8_E8M0" or not ok_dtype or tuple(shape) != tuple(want or ()):
            out.append(f"{name}: {dtype} {shape} for weight {wdtype} {wshape}, expected F8_E8M0 {want}")
        if not name.startswith("mtp.") and not mapped.endswith(suffix):
            out.append(f"{name}: vLLM's GPU mapper names it {mapped!r}, not *{suffix}")
    return out


def gpu_path_problems(cpu_cls, gpu_map, names: list[str]) -> list[str]:
    """The GPU class must rename and stack the checkpoint as the CPU class exercised here does."""
    from vllm.models.deepseek_v4.nvidia import model as nvidia

    out = []
    cpu_map = cpu_cls.hf_to_vllm_mapper
    for name in names:
        if not name.endswith(".scale") and gpu_map._map_name(name) != cpu_map._map_name(name):
            out.append(f"{name}: GPU mapper {gpu_map._map_name(name)!r} != {cpu_map._map_name(name)!r}")
    gpu_table, cpu_table = stacking_table(nvidia.DeepseekV4ForCausalLM), stacking_table(cpu_cls)
    if not gpu_table or gpu_table != cpu_table:
        out.append(f"stacked_params_mapping: GPU {gpu_table} vs checked {cpu_table}")
    return out[:20]


def tokenizer_report(ckpt: Path, cfg: dict) -> dict:
    """transformers loads it; vLLM's V4 chat encoding renders; every V4 special token is one id."""
    import vllm.renderers.deepseek_v4 as renderer
    import vllm.tokenizers.deepseek_v4_encoding as encoding
    from transformers import AutoTokenizer
    from vllm.tokenizers.deepseek_v4 import DeepseekV4Tokenizer

    hf = AutoTokenizer.from_pretrained(str(ckpt))
    strings = [v for m in (encoding, renderer) for v in vars(m).values() if isinstance(v, str)]
    strings += [v for v in vars(encoding).get("DS_TASK_SP_TOKENS", {}).values()]
    specials = sorted({s for s in strings if re.fullmatch(r"<｜[^｜<>]+｜>|</?think>|｜DSML｜", s)})
    ids = {s: hf.encode(s, add_special_tokens=False) for s in specials}
    v4 = DeepseekV4Tokenizer.from_pretrained(str(ckpt))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    chat = v4.apply_chat_template(messages, tools=tools, thinking=True)
    text = v4.apply_chat_template(messages, tools=tools, thinking=True, tokenize=False)
    plain = hf.encode("Hello, world! 你好")
    return {
        "len": len(hf),
        "vocab_size": cfg["vocab_size"],
        "bos": [hf.bos_token_id, cfg["bos_token_id"]],
        "eos": [hf.eos_token_id, cfg["eos_token_id"]],
        "specials": {s: i for s, i in ids.items()},
        "chat_ids_head": chat[:3],
        "chat_has": {s: ids[s][0] in chat for s in specials if len(ids[s]) == 1},
        "chat_roundtrip": hf.decode(chat) == text,
        "plain_roundtrip": hf.decode(plain, skip_special_tokens=True) == "Hello, world! 你好",
        "plain_starts_with_bos": plain[:1] == [hf.bos_token_id],
        "max_id_decodes": hf.decode([cfg["vocab_size"] - 1]) != "",
        "dsml_in_text": "｜DSML｜" in text,
    }


# Breakages the check must see (each alone): sizes a TP-narrowing loader would accept, a bad scale,
# a missing and a misnamed tensor.
MUTATIONS = (
    ("layers.2.attn.compressor.wkv.weight", "rows x2"),
    ("layers.0.ffn.experts.3.w1.weight", "rows /2"),
    ("layers.1.attn.wq_b.scale", "cols +1"),
    ("layers.1.attn.kv_norm.weight", "drop"),
    ("layers.0.attn.wkv.weight", "rename"),
)


def mutation_report(cfg: dict, tensors: dict) -> dict:
    """How many problems each mutation of the checkpoint produces (every count must be > 0)."""
    found = {}
    for name, how in MUTATIONS:
        changed = dict(tensors)
        dtype, shape = changed.pop(name)
        if how == "rows x2":
            changed[name] = (dtype, (shape[0] * 2, *shape[1:]))
        elif how == "rows /2":
            changed[name] = (dtype, (shape[0] // 2, *shape[1:]))
        elif how == "cols +1":
            changed[name] = (dtype, (shape[0], shape[1] + 1))
        elif how == "rename":
            changed[name.replace(".wkv.", ".wkvx.")] = (dtype, shape)
        found[f"{name} {how}"] = len(check(cfg, changed)["problems"])
    return found


def main() -> int:
    args = sys.argv[1:]
    out = Path(args[-1])
    if args[0] == "--shape":
        cfg, tensors = planned(args[1])
        report = check(cfg, tensors)
    else:
        ckpt = Path(args[0])
        cfg = json.loads((ckpt / "config.json").read_text())
        report = check(cfg, read_tensors(ckpt))
        report["tokenizer"] = tokenizer_report(ckpt, cfg)
        if "--mutations" in args:
            report["mutations"] = mutation_report(cfg, read_tensors(ckpt))
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    os._exit(0)  # skip vLLM's atexit teardown of the process group


if __name__ == "__main__":
    sys.exit(main())
