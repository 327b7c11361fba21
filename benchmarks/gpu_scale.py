"""Scale benchmark: the largest GPT-2-style decoder whose 100-probe Hessian trace fits on one device.

Run on a GPU through ``benchmarks/gpu_check.sh``, or anywhere as ``python -m benchmarks.gpu_scale
--tiny`` (a toy memory budget on a CPU, to check the script).

The model is a GPT-2-style pre-LayerNorm decoder (vocabulary 50257, width 1600 and 25 heads as in
GPT-2 XL) whose blocks are stacked and run by ``lax.scan``, so that compiling it costs the same at
every depth. "Remat" wraps each block in ``jax.checkpoint`` with the ``nothing_saveable`` policy:
the linearized gradient then keeps only the block inputs and every product recomputes the blocks'
forward pass. The batch is 8 sequences of 256 tokens (as the GPT-2 small workload of
``benchmarks/gpu.py``). Matrix products run at JAX's default precision (TF32 on an H100).

For each setting (remat off/on; bfloat16 compute with remat last, if time remains) the script:

1. runs a 2-probe ``hessjax.trace(hessjax.hvp_fn(...))`` at depths 4 and 8, each in a fresh
   process, and reads the device's peak memory. The peak is affine in depth (the scan stacks one
   layer's weights and residuals per layer), so the two give its slope and the largest depth that
   should fit the budget (90% of the device's limit);
2. runs the trace the way a user would (eager call, probes chunk by chunk) at that depth in a fresh
   process, so that the device's peak memory is this run's alone, and times it after a warm-up
   call; if it runs out of memory, steps down by a tenth and tries again.

Also reported: the peak bytes per layer and the fixed bytes, from which the depth that fits any
other budget follows. On a CPU (``--tiny``), where JAX keeps no memory statistics, XLA's planned
footprint of the jitted trace (:func:`footprint`) stands in for the peak. The markdown
table is rewritten after every row to ``$OUT/gpu_scale.md`` (when ``OUT`` is set).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Without preallocation JAX may still grow only to 75% of the card; let the trace have it all.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import hessjax  # noqa: E402
from benchmarks import timing  # noqa: E402

NUM_PROBES = 100
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Decoder:
    """Sizes of the scanned decoder and its batch."""

    depth: int = 48
    width: int = 1600
    num_heads: int = 25
    vocab_size: int = 50257
    length: int = 256
    batch_size: int = 8

    @property
    def num_params(self) -> int:
        d = self.width
        per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
        return self.vocab_size * d + self.length * d + 2 * d + self.depth * per_block


@dataclasses.dataclass(frozen=True)
class Setting:
    """One way of running the trace: rematerialized blocks or not, and the compute dtype."""

    remat: bool
    bfloat16: bool = False

    @property
    def label(self) -> str:
        return ("remat" if self.remat else "no remat") + (", bf16 compute" if self.bfloat16 else "")


SETTINGS = (Setting(remat=False), Setting(remat=True), Setting(remat=True, bfloat16=True))


def size(num_bytes: float) -> str:
    """Bytes in GiB, or in MiB below one GiB."""
    return f"{num_bytes / GIB:.2f} GiB" if abs(num_bytes) >= GIB else f"{num_bytes / 2**20:.1f} MiB"


def count(number: int) -> str:
    """A parameter count: billions above 100 million, else with thousands separators."""
    return f"{number / 1e9:.2f}B" if number >= 1e8 else f"{number:,}"


def init_params(shape: Decoder, key: jax.Array) -> dict:
    """GPT-2's initialization (normal, std 0.02), each block's weights stacked on a depth axis."""
    d, depth = shape.width, shape.depth
    keys = iter(jax.random.split(key, 6))

    def normal(*dims):
        return 0.02 * jax.random.normal(next(keys), dims, jnp.float32)

    def norm(*lead):
        return {"scale": jnp.ones((*lead, d)), "bias": jnp.zeros((*lead, d))}

    def dense(fan_in, fan_out):
        return {"kernel": normal(depth, fan_in, fan_out), "bias": jnp.zeros((depth, fan_out))}

    return {"token_embedding": normal(shape.vocab_size, d),
            "position_embedding": normal(shape.length, d) * 0.5,
            "final_norm": norm(),
            "blocks": {"norm1": norm(depth), "qkv": dense(d, 3 * d),
                       "attention_out": dense(d, d), "norm2": norm(depth),
                       "mlp_in": dense(d, 4 * d), "mlp_out": dense(4 * d, d)}}


def params_spec(shape: Decoder) -> dict:
    """The parameters' shapes and dtypes, without allocating them."""
    return jax.eval_shape(lambda: init_params(shape, jax.random.key(0)))


def _layer_norm(x, p):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.var(x32, -1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + 1e-5)).astype(x.dtype) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def make_loss(shape: Decoder, setting: Setting):
    """``loss_fn(params, (tokens, labels))``: mean next-token cross-entropy of the decoder."""
    heads, head_dim = shape.num_heads, shape.width // shape.num_heads

    def block(x, layer):
        b, n, d = x.shape
        qkv = _dense(_layer_norm(x, layer["norm1"]), layer["qkv"])
        q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, n, heads, head_dim) for i in range(3))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        mask = jnp.tril(jnp.ones((n, n), bool))
        weights = jax.nn.softmax(jnp.where(mask, scores.astype(jnp.float32), -1e9), axis=-1)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(x.dtype), v).reshape(b, n, d)
        x = x + _dense(attended, layer["attention_out"])
        hidden = jax.nn.gelu(_dense(_layer_norm(x, layer["norm2"]), layer["mlp_in"]))
        return x + _dense(hidden, layer["mlp_out"])

    if setting.remat:
        block = jax.checkpoint(block, policy=jax.checkpoint_policies.nothing_saveable,
                               prevent_cse=False)

    def loss_fn(params, batch):
        tokens, labels = batch
        x = params["token_embedding"][tokens] + params["position_embedding"][:tokens.shape[1]]
        x, _ = jax.lax.scan(lambda x, layer: (block(x, layer), None), x, params["blocks"])
        logits = _layer_norm(x, params["final_norm"]) @ params["token_embedding"].T
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))

    if setting.bfloat16:
        return hessjax.memory.mixed_precision(loss_fn, jnp.bfloat16)
    return loss_fn


def make_batch(shape: Decoder, seed: int = 0):
    tokens = jax.random.randint(jax.random.key(seed), (shape.batch_size, shape.length + 1), 0,
                                shape.vocab_size)
    return tokens[:, :-1], tokens[:, 1:]


def run_trace(loss_fn, params, batch, key, chunk_size: int, num_probes: int = NUM_PROBES):
    """The user's call: a Hutchinson trace on the linearized gradient."""
    matvec = hessjax.hvp_fn(loss_fn, params, batch)
    return hessjax.trace(matvec, params, key, num_matvecs=num_probes, chunk_size=chunk_size)


def footprint(shape: Decoder, setting: Setting, chunk_size: int) -> int:
    """Bytes XLA plans for the whole jitted 100-probe trace: arguments, outputs and temporaries."""
    loss_fn = make_loss(shape, setting)
    program = jax.jit(lambda p, b, k: run_trace(loss_fn, p, b, k, chunk_size).value)
    batch = jax.eval_shape(lambda: make_batch(shape))
    compiled = program.lower(params_spec(shape), batch, jax.random.key(0)).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError("this backend reports no memory analysis for compiled programs")
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
               + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def peak_bytes(shape: Decoder, setting: Setting, timeout: float) -> int:
    """The device's peak memory over a 2-probe trace in a fresh process.

    Where the backend keeps no memory statistics (a CPU), XLA's planned :func:`footprint` instead.
    """
    result = measure_in_subprocess(shape, setting, 1, timeout, num_probes=2, warm_up=False)
    if "error" in result:
        raise RuntimeError(result["error"])
    if result["peak"] is None:
        return footprint(shape, setting, 1)
    return int(result["peak"])


def largest_depth(base: Decoder, setting: Setting, budget: int, step: int,
                  table: timing.Table, deadline: float) -> int | None:
    """The largest depth (a multiple of ``step``) whose peak memory should fit ``budget``.

    The peak is affine in depth (the scan stacks one layer's weights, probes and residuals per
    layer): two shallow runs give its slope, and the depth is extrapolated from them and then
    confirmed by running it (:func:`sweep` steps down by a tenth where the run does not fit).
    XLA's plan for the whole jitted trace is not used: the eager call holds the linearization's
    residuals and each chunk's temporaries as separate allocations, and on an H100 it ran out of
    memory at depths the plan said would fit.
    """
    shallow, deeper = step, 2 * step
    low = peak_bytes(dataclasses.replace(base, depth=shallow), setting, deadline - time.monotonic())
    high = peak_bytes(dataclasses.replace(base, depth=deeper), setting, deadline - time.monotonic())
    per_layer = (high - low) / (deeper - shallow)
    fixed = low - per_layer * shallow
    if per_layer <= 0:
        raise RuntimeError(f"the peak memory does not grow with depth ({low} -> {high} bytes)")
    depth = int((budget - fixed) // per_layer) // step * step
    table.add(setting.label, "peak memory per layer / fixed (chunk_size 1)",
              f"{size(per_layer)} / {size(fixed)}",
              f"from 2-probe runs at depths {shallow} and {deeper}; width {base.width}, batch "
              f"{base.batch_size}x{base.length}; depth that should fit {size(budget)}: {depth} "
              f"layers ({count(dataclasses.replace(base, depth=depth).num_params)} parameters)")
    return depth if depth >= step else None


def measure_one(shape: Decoder, setting: Setting, chunk_size: int, num_probes: int = NUM_PROBES,
                warm_up: bool = True) -> dict:
    """Runs in a fresh process: a 2-chunk warm-up (compiles), then the timed trace."""
    loss_fn = make_loss(shape, setting)
    params = jax.jit(init_params, static_argnums=0)(shape, jax.random.key(1))
    batch = make_batch(shape)
    key = jax.random.key(0)
    warm_up_seconds = 0.0
    if warm_up:
        start = time.perf_counter()
        jax.block_until_ready(run_trace(loss_fn, params, batch, key, chunk_size,
                                        num_probes=2 * chunk_size))
        warm_up_seconds = time.perf_counter() - start
    start = time.perf_counter()
    estimate = jax.block_until_ready(run_trace(loss_fn, params, batch, key, chunk_size, num_probes))
    seconds = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    return {"seconds": seconds, "warm_up": warm_up_seconds, "value": float(estimate.value),
            "stderr": float(estimate.stderr), "peak": stats.get("peak_bytes_in_use"),
            "limit": stats.get("bytes_limit")}


def measure_in_subprocess(shape: Decoder, setting: Setting, chunk_size: int, timeout: float,
                          num_probes: int = NUM_PROBES, warm_up: bool = True) -> dict:
    """:func:`measure_one` in a fresh Python, so the peak memory is its own; errors come back."""
    request = json.dumps({"shape": dataclasses.asdict(shape), "setting": dataclasses.asdict(setting),
                          "chunk_size": chunk_size, "num_probes": num_probes, "warm_up": warm_up})
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_scale", "--measure", request],
                              capture_output=True, text=True, timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        output = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in output if "Error" in line] or output[-1:]
        return {"error": errors[-1].strip()[-300:] if errors else f"exit status {done.returncode}"}
    return json.loads(lines[-1])


def sweep(base: Decoder, budget: int, step: int, settings, table: timing.Table,
          seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for setting in settings:
        if time.monotonic() > deadline - 30:
            table.add(setting.label, "skipped", "out of time")
            continue
        try:
            depth = largest_depth(base, setting, budget, step, table, deadline)
        except Exception as error:  # noqa: BLE001 - a failed compile is a result
            table.add(setting.label, "largest depth", "failed", timing.describe(error))
            continue
        while depth is not None and depth >= step:
            shape = dataclasses.replace(base, depth=depth)
            result = measure_in_subprocess(shape, setting, 1, deadline - time.monotonic())
            if "error" not in result:
                peak = "" if result["peak"] is None else f"peak {size(result['peak'])}, "
                table.add(setting.label,
                          f"{NUM_PROBES}-probe trace, depth {depth} "
                          f"({count(shape.num_params)} parameters), chunk_size 1",
                          timing.seconds(result["seconds"]),
                          f"{peak}warm-up {timing.seconds(result['warm_up'])}, estimate "
                          f"{result['value']:.4g} ± {result['stderr']:.2g}")
                break
            table.add(setting.label, f"{NUM_PROBES}-probe trace, depth {depth}", "failed",
                      result["error"])
            if not _out_of_memory(result["error"]):
                break
            # A tenth less (at least one step): each try costs a compile and a warm-up.
            depth -= max(step, round(0.1 * depth / step) * step)


def _out_of_memory(error: str) -> bool:
    return any(text in error for text in ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny decoder and a 12 MiB budget (checks the script on a CPU)")
    parser.add_argument("--seconds", type=float, default=240.0, help="time limit for the sweep")
    parser.add_argument("--settings", default="0,1,2",
                        help="comma-separated indices into: no remat, remat, remat + bf16")
    parser.add_argument("--plan", action="store_true",
                        help="print XLA's planned footprint per layer of a small decoder (any "
                             "backend, no allocation) and exit")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plan:
        print_plan([SETTINGS[int(i)] for i in args.settings.split(",")])
        return
    if args.measure:
        request = json.loads(args.measure)
        print(json.dumps(measure_one(Decoder(**request["shape"]), Setting(**request["setting"]),
                                     request["chunk_size"], request["num_probes"],
                                     request["warm_up"])), flush=True)
        return
    if args.tiny:
        base, step, budget = Decoder(width=32, num_heads=2, vocab_size=256, length=16,
                                     batch_size=2), 2, 12 * 2**20
    else:
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" not in stats:
            raise SystemExit("this device reports no memory limit; run with --tiny on a CPU")
        # Leave a tenth for the allocator's fragmentation and the libraries' workspaces: on the
        # H100 a depth whose measured peak extrapolated to 94% of the limit failed to allocate
        # one 20.6 GiB buffer.
        base, step, budget = Decoder(), 4, int(0.9 * stats["bytes_limit"])
    out = os.environ.get("OUT")
    header = "\n".join([
        f"## GPU scale benchmark {timing.now()}{' (--tiny)' if args.tiny else ''}", "",
        f"- machine: {timing.machine()}", f"- versions: {timing.versions_line()}",
        f"- decoder: width {base.width}, {base.num_heads} heads, vocabulary {base.vocab_size}, "
        f"batch {base.batch_size}x{base.length}, float32 parameters and probes; budget "
        f"{size(budget)}" + ("" if args.tiny else " (90% of the device's limit)")])
    print(header, flush=True)
    path = pathlib.Path(out) / "gpu_scale.md" if out else None
    table = timing.RecordingTable(path, header)
    settings = [SETTINGS[int(i)] for i in args.settings.split(",")]
    sweep(base, budget, step, settings, table, args.seconds)
    print(table.markdown(), flush=True)


def print_plan(settings, base: Decoder = Decoder(width=512, num_heads=8, vocab_size=5000,
                                               length=64, batch_size=2)) -> None:
    """XLA's planned footprint of the jitted 100-probe trace, per layer, in copies of a layer's
    parameters: how much of the memory is the probe machinery rather than the activations. Runs
    on a CPU in a few minutes (the measure of the probe-memory change in ``benchmarks/NOTES.md``).
    """
    layer = dataclasses.replace(base, depth=1).num_params - dataclasses.replace(base, depth=0).num_params
    for setting in settings:
        planned = {depth: footprint(dataclasses.replace(base, depth=depth), setting, 1)
                   for depth in (4, 8)}
        per_layer = (planned[8] - planned[4]) / 4
        print(f"{setting.label}: planned {size(per_layer)} per layer = "
              f"{per_layer / (4 * layer):.2f} copies of a layer's float32 parameters "
              f"(width {base.width}, batch {base.batch_size}x{base.length})", flush=True)


if __name__ == "__main__":
    main()
