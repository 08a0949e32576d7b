"""TurboMind engine vs transformers engine on the same random-weight InternVL, through the Engine protocol.

For each engine (each in its own process, so GPU memory is clean): 1 and 16 concurrent streams, each a one-image chat
with a fixed 256-token answer (the checkpoint's end-token logits are zeroed, and TurboMind ignores EOS), greedy.
Prints tokens/s, time to first token, and single-stream decode speed as a share of the memory-bandwidth bound
(language-model weight bytes read once per token / HBM bandwidth measured here with a device-to-device copy).

    python -m bench.engine_bench_gpu --size 2b --json OUT.json   # builds /tmp/bench-2b once, then both engines
    python -m bench.engine_bench_gpu --size 8b --engines turbomind
bench/gpu_check.sh runs the 2b one. Targets (issue 16): turbomind >= 5x transformers at 16 streams; single-stream
decode >= 60% of the bandwidth bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ENGINES = {"turbomind": "workers.engines.turbomind_engine:TurbomindEngine",
           "transformers": "workers.engines.transformers_engine:TransformersEngine"}


def hbm_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read and written."""
    import torch

    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * reps / (time.perf_counter() - start)


def host_memory() -> dict:
    """This process's resident and locked host memory in GiB (/proc/self/status): pinned buffers are both."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024**2 for key in ("VmRSS", "VmLck", "VmPin") if key in fields}


async def run_engine(name: str, path: str, streams: list[int], tokens: int) -> dict:
    import torch

    from workers.engines.base import GenerationRequest, SamplingParams, TokenEvent
    from workers.engines.select import load_engine_class
    from workers.model_spec import detect_model_spec
    from workers.prompts.templates import get_template
    from workers.settings import WorkerSettings

    spec = detect_model_spec(path)
    settings = WorkerSettings(model_path=path, engine=name, max_concurrency=max(streams), device="cuda",
                              dtype="bfloat16", controller_url=None)
    engine = load_engine_class(ENGINES[name])(settings, spec)
    if hasattr(engine, "ignore_eos"):
        engine.ignore_eos = True
    before = host_memory()
    await engine.start()
    after = host_memory()
    expected = getattr(getattr(engine, "resolved", None), "vit_pinned_bytes", 0) / 1024**3
    host = {"start_gib": {k: round(after[k] - before[k], 2) for k in after},
            "vit_pinned_expected_gib": round(expected, 2)}
    placeholder = spec.image_start + spec.image_token * spec.tokens_per_tile + spec.image_end
    prompt = get_template(spec.template).render(spec.system_message, [("user", f"{placeholder}\nDescribe it.")])
    pixels = torch.randn(1, 3, spec.image_size, spec.image_size)

    async def one(rid: str) -> dict:
        req = GenerationRequest(request_id=rid, prompt=prompt, pixel_values=pixels, num_tiles=[1],
                                sampling=SamplingParams(max_new_tokens=tokens, temperature=0.0))
        start = time.perf_counter()
        first = last = None
        async for event in engine.generate(req):
            now = time.perf_counter()
            if isinstance(event, TokenEvent):
                first = first or now
                last = now
            else:
                done = event
        return dict(ttft=first - start, decode_s=last - first, tokens=done.completion_tokens)

    await one("warmup")
    out = {}
    for n in streams:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(f"{n}-{i}") for i in range(n)))
        wall = time.perf_counter() - start
        total = sum(r["tokens"] for r in results)
        out[n] = dict(tok_s=total / wall, ttft_mean=sum(r["ttft"] for r in results) / n,
                      ttft_max=max(r["ttft"] for r in results), tokens_min=min(r["tokens"] for r in results),
                      decode_tok_s=(results[0]["tokens"] - 1) / results[0]["decode_s"] if n == 1 else None)
    await engine.stop()
    return {"streams": out, "host": host}


def child(args) -> None:
    result = asyncio.run(run_engine(args.child, args.path, args.streams, args.tokens))
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="2b", choices=["tiny", "2b", "8b"])
    parser.add_argument("--path", default=None, help="checkpoint (default /tmp/bench-SIZE, built if missing)")
    parser.add_argument("--engines", default="turbomind,transformers")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child-timeout", type=float, default=200.0, help="seconds per engine, loading included")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    from tests.gpu.random_checkpoint import build_native_v2
    from workers.engines.turbomind_config import CheckpointFacts

    path = Path(args.path or f"/tmp/bench-{args.size}")
    if not (path / "config.json").exists():
        t0 = time.perf_counter()
        build_native_v2(path, args.size, "cuda")
        print(f"built {path} ({args.size}, random weights) in {time.perf_counter() - t0:.0f}s", flush=True)
        torch.cuda.empty_cache()
    facts = CheckpointFacts.read(path)
    bandwidth = hbm_bandwidth()
    bound = bandwidth / facts.llm_weight_bytes  # tokens/s if every decode step only streamed the LLM weights once
    print(f"GPU {torch.cuda.get_device_name(0)}: copy bandwidth {bandwidth / 1e12:.2f} TB/s; language model "
          f"{facts.llm_weight_bytes / 1e9:.2f} GB -> bound {bound:.0f} tok/s single-stream", flush=True)

    results, host = {}, {}
    for name in args.engines.split(","):
        cmd = [sys.executable, "-m", "bench.engine_bench_gpu", "--child", name, "--path", str(path),
               "--streams", ",".join(map(str, args.streams)), "--tokens", str(args.tokens)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
        except subprocess.TimeoutExpired as exc:
            print(f"{name} ran past {args.child_timeout:.0f}s:\n{str(exc.stdout or '')[-3000:]}", flush=True)
            continue
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
            continue
        parsed = json.loads(line[-1][7:])
        results[name] = {int(k): v for k, v in parsed["streams"].items()}
        host[name] = parsed["host"]

    print(f"\n{args.size} ({facts.llm_weight_bytes / 2e9:.1f}B LLM params), {args.tokens} output tokens, greedy")
    print(f"{'engine':<13}{'streams':>8}{'tok/s':>10}{'TTFT mean':>11}{'TTFT max':>10}{'min tokens':>11}"
          f"{'decode tok/s':>14}{'of bound':>10}")
    for name, per in results.items():
        for n, r in per.items():
            dec = r["decode_tok_s"]
            print(f"{name:<13}{n:>8}{r['tok_s']:>10.1f}{r['ttft_mean']:>10.3f}s{r['ttft_max']:>9.3f}s"
                  f"{r['tokens_min']:>11}{(f'{dec:.1f}' if dec else '-'):>14}{(f'{dec / bound:.0%}' if dec else '-'):>10}")
    for name, mem in host.items():
        print(f"{name} start-up host memory (GiB): grew by {mem['start_gib']}; the worker expects the ViT to pin "
              f"{mem['vit_pinned_expected_gib']} per GPU")
    ratios = {}
    if {"turbomind", "transformers"} <= results.keys():
        for n in args.streams:
            ratios[n] = results["turbomind"][n]["tok_s"] / results["transformers"][n]["tok_s"]
            target = "  (target >= 5x)" if n >= 16 else ""
            print(f"turbomind / transformers at {n} streams: {ratios[n]:.1f}x{target}")
    if args.json:
        args.json.write_text(json.dumps({
            "gpu": torch.cuda.get_device_name(0), "size": args.size, "output_tokens": args.tokens,
            "llm_weight_bytes": facts.llm_weight_bytes, "copy_bandwidth_bytes_s": bandwidth, "bound_tok_s": bound,
            "results": results, "host_memory": host, "turbomind_over_transformers": ratios,
            "single_stream_share_of_bound": {name: per[1]["decode_tok_s"] / bound for name, per in results.items()
                                             if per.get(1, {}).get("decode_tok_s")}}, indent=1))


if __name__ == "__main__":
    main()
