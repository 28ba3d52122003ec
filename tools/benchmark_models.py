"""Benchmark the four networks: images/s (forward, training) and FLOPs per image.

For each network at 192^2 and each dtype policy (float32, mixed_bfloat16) it
times ``--steps`` forward passes (``model(x, training=False)`` in a
``tf.function``) and ``--steps`` training steps (``train_on_batch`` with Adam
and the parity-min MSE) at ``--batch`` images, after one warm-up of each.
FLOPs are counted analytically from the layer shapes (2 x multiply-adds of
every Conv2D and Dense; pools, BN and activations are neglected); a training
step is taken as 3x the forward FLOPs (forward + two backward products).

Usage:
    python tools/benchmark_models.py --models alexnet ensai_net --batch 32 --steps 3
"""

import argparse
import json
import time

import numpy as np

MODELS = ("alexnet", "overfeat", "ensai_net", "inception_v4")
POLICIES = ("float32", "mixed_bfloat16")


def forward_flops(model):
    """Forward FLOPs per image (2 x MACs of Conv2D and Dense layers)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.kernel.shape[2]
            _, h, w, cout = layer.output.shape
            total += 2 * kh * kw * cin * cout * h * w
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def _time(fn, steps):
    fn()  # warm-up: tracing and oneDNN primitive creation
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def benchmark(name, policy, batch, steps, side=192):
    """One row of the table: seconds per step and images/s, forward and training."""
    import keras
    import tensorflow as tf

    from ensai_tf.losses import ParityMSE
    from ensai_tf.models import build_model

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_model(name, input_shape=(side, side, 1))
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=ParityMSE())
        rng = np.random.default_rng(0)
        x = tf.constant(rng.uniform(0, 1, (batch, side, side, 1)).astype(np.float32))
        y = tf.constant(rng.uniform(-0.5, 0.5, (batch, 5)).astype(np.float32))
        forward = tf.function(lambda images: model(images, training=False))
        fwd_s = _time(lambda: forward(x).numpy(), steps)
        train_s = _time(lambda: model.train_on_batch(x, y), steps)
        flops = forward_flops(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"model": name, "policy": policy, "batch": batch, "steps": steps,
            "params_m": model.count_params() / 1e6, "gflop_per_image": flops / 1e9,
            "forward_img_s": batch / fwd_s, "train_img_s": batch / train_s,
            "forward_gflop_s": flops * batch / fwd_s / 1e9,
            "train_gflop_s": 3 * flops * batch / train_s / 1e9}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--side", type=int, default=192, help="input side, pixels")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = []
    header = (f"{'model':<13}{'policy':<16}{'params M':>9}{'GFLOP/img':>10}{'fwd img/s':>10}"
              f"{'train img/s':>12}{'fwd GFLOP/s':>12}{'train GFLOP/s':>14}")
    print(header, flush=True)
    for name in args.models:
        for policy in args.policies:
            r = benchmark(name, policy, args.batch, args.steps, args.side)
            rows.append(r)
            print(f"{r['model']:<13}{r['policy']:<16}{r['params_m']:>9.1f}"
                  f"{r['gflop_per_image']:>10.2f}{r['forward_img_s']:>10.1f}"
                  f"{r['train_img_s']:>12.2f}{r['forward_gflop_s']:>12.0f}"
                  f"{r['train_gflop_s']:>14.0f}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
