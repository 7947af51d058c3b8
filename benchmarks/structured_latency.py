"""Structured pruning: MACs removed vs measured CPU latency, effdnn against torch-pruning and
torch.nn.utils.prune on the same ResNet-20 (width 16, Fashion-MNIST geometry 1x28x28), LeNet-5 or
MobileNetV2 (``--width``, default 0.35).

    python benchmarks/structured_latency.py [--model resnet20 | lenet5 | lenet5-caffe | mobilenetv2] [--weights runs/.../model.pt] [--threads 2]
                                            [--engine torch | onnxruntime] [--input random | test] [--channels-last]
                                            [--inference-form] [--bn-recalibration N]

Latency does not depend on the weights' values, so untrained weights give the same timings; pass a
checkpoint to also see the accuracy right after pruning (before fine-tuning). Variants are timed
interleaved (round-robin) in one process, which cancels most of the machine's drift; the figure of
merit is speedup / MAC reduction (1.0 = latency falls exactly with the MACs). ``dense_copy``, a deep
copy of the dense model timed as one more variant, shows how far two runs of the same work drift
apart in one measurement. ``--engine onnxruntime`` times every variant's ONNX export in onnxruntime
(the deployment path: Conv + ReLU fused, no Python per layer) instead of torch eager.
``--inference-form`` times every variant after ``effdnn.optimize_for_inference`` (the same outputs,
checked; max-pools as strided maxima, ReLUs after pooling) and adds ``dense_torch_modules``, the dense
model as trained, to show what that form saves. ``--model lenet5-caffe`` is the Deep Compression
paper's LeNet-5 (conv 20 - conv 50 - fc 500). ``effdnn_group_l1_*`` score channels by their whole group
(``saliency: group_l1``); ``--bn-recalibration N`` re-estimates every pruned model's BatchNorm
statistics (effdnn's and torch-pruning's alike) before the accuracy right after pruning is measured.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import effdnn  # noqa: E402
from effdnn.models import build_model  # noqa: E402
from effdnn.utils.batchnorm import recalibrate_batchnorm  # noqa: E402


def labelled(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of ``dataset`` at ``indices``, stacked."""
    return (torch.stack([dataset[i][0] for i in indices]), torch.tensor([int(dataset[i][1]) for i in indices]))


def rr_bench(variants: dict, x: torch.Tensor, rounds: int, per_round: int, warmup: int = 5) -> dict[str, float]:
    """Median latency (ms) of each variant, timed round-robin."""
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():
            for _ in range(warmup):
                fn(x)
        for _ in range(rounds):
            for k, fn in variants.items():
                for _ in range(per_round):
                    t = time.perf_counter()
                    fn(x)
                    times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def ort_runners(variants: dict[str, nn.Module], example: torch.Tensor, threads: int) -> dict:
    """Each variant exported to ONNX (effdnn's exporter) and wrapped as an onnxruntime session."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    tmp = Path(tempfile.mkdtemp())
    out = {}
    for k, m in variants.items():
        sess = ort.InferenceSession(str(effdnn.export_onnx(m, example, tmp / f"{k}.onnx")), so,
                                    providers=["CPUExecutionProvider"])
        out[k] = lambda x, s=sess: s.run(None, {"input": x.numpy()})[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("resnet20", "lenet5", "lenet5-caffe", "mobilenetv2"), default="resnet20")
    ap.add_argument("--width", type=float, default=0.35, help="--model mobilenetv2: the width multiplier")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--channels-last", action="store_true", help="time every variant (and its input) in channels-last layout")
    ap.add_argument("--inference-form", action="store_true",
                    help="time every variant after effdnn.optimize_for_inference (strided max-pools, ReLU after pooling)")
    ap.add_argument("--bn-recalibration", type=int, default=0, metavar="N",
                    help="with --weights: re-estimate BatchNorm statistics after pruning on N batches of training images "
                         "(effdnn's bn_recalibration, the same for torch-pruning's models)")
    ap.add_argument("--engine", choices=("torch", "onnxruntime"), default="torch")
    ap.add_argument("--input", choices=("random", "test"), default="random",
                    help="time on N(0, 1) noise or on the first test images (needs --weights): CPU max-pooling "
                         "branches on the data, so its time depends on what the ReLUs let through")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("command: python benchmarks/structured_latency.py " + " ".join(sys.argv[1:]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads")
    torch.manual_seed(0)
    if args.model == "resnet20":
        dense = build_model("resnet", 1, 10, (28, 28), depth=20, width=16).eval()
        configs = ((0.3, 1, {}), (0.3, 4, {}), (0.4, 4, {}), (0.5, 1, {}))
    elif args.model == "mobilenetv2":  # recipes/fashion_mobilenetv2_prune.yaml's two rows
        dense = build_model("mobilenetv2", 1, 10, (28, 28), width=args.width).eval()
        configs = ((0.35, 1, {}), (0.35, 8, {}), (0.45, 8, {}))
    elif args.model == "lenet5-caffe":  # the Deep Compression paper's LeNet-5 (conv 20 - conv 50 - fc 500 - fc 10)
        dense = build_model("lenet5", 1, 10, (28, 28), variant="caffe").eval()
        configs = ((0.3, 1, {}), (0.35, 1, {}), (0.4, 1, {}), (0.5, 1, {}))
    else:
        dense = build_model("lenet5", 1, 10, (28, 28)).eval()
        # uniform ratios, then the latency-aware splits of recipes/fashion_prune.yaml (conv1 cut harder)
        configs = ((0.3, 1, {}), (0.4, 1, {}), (0.5, 1, {}), (0.25, 1, {"features.0": 0.5}),
                   (0.0, 1, {"features.0": 0.5, "features.3": 0.25}))
    if args.weights:
        dense.load_state_dict(torch.load(args.weights, map_location="cpu"))
    x1 = torch.randn(1, 1, 28, 28)
    calib = [(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))]
    test = None
    if args.weights:
        from effdnn.data import load_data

        data = load_data("fashion-mnist")
        n = max(1000, args.batch)
        test = labelled(data.test, range(n))
        if args.bn_recalibration:  # training images: 64 per batch, the first of a seeded shuffle
            order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:64 * args.bn_recalibration]
            calib = [labelled(data.train, chunk.tolist()) for chunk in order.split(64)]
    elif args.bn_recalibration:
        raise SystemExit("--bn-recalibration needs --weights (a trained model and the training images)")
    adabn = {"bn_recalibration": args.bn_recalibration}
    macs0 = effdnn.cost(dense, x1).macs
    variants: dict[str, nn.Module] = {"dense": dense, "dense_copy": copy.deepcopy(dense)}
    for ratio, round_to, per_layer in configs:
        name = (f"effdnn_channel_{int(ratio * 100)}" + (f"_r{round_to}" if round_to > 1 else "")
                + "".join(f"_{k.replace('features.', 'f')}-{int(v * 100)}" for k, v in per_layer.items()))
        variants[name] = effdnn.prune(copy.deepcopy(dense), {"method": "channel", "saliency": "l1", "sparsity": ratio,
                                                             "round_to": round_to, "layer_sparsity": per_layer, **adabn}, calib).eval()
    tp_ratios = {"lenet5-caffe": (0.3, 0.35, 0.5), "mobilenetv2": (0.35,)}.get(args.model, (0.3, 0.5))
    for ratio in tp_ratios:  # the group's weights (producers, BatchNorms, consumers), as torch-pruning scores them
        variants[f"effdnn_group_l1_{int(ratio * 100)}"] = effdnn.prune(
            copy.deepcopy(dense), {"method": "channel", "saliency": "group_l1", "sparsity": ratio, **adabn}, calib).eval()
    try:
        import torch_pruning as tp

        for ratio in tp_ratios:
            m = copy.deepcopy(dense)
            last_m = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
            pr = tp.pruner.MagnitudePruner(m, x1, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=[last_m])
            pr.step()
            if args.bn_recalibration:  # the same adaptive BN as effdnn's variants, for a fair comparison
                recalibrate_batchnorm(m, calib, args.bn_recalibration)
            variants[f"torch_pruning_{int(ratio * 100)}"] = m.eval()
        tp_version = tp.__version__
    except ImportError:
        tp_version = None
        print("torch-pruning not installed: pip install torch-pruning (benchmark only)")
    tnp = copy.deepcopy(dense)  # torch.nn.utils.prune: zeroes channels (ln_structured) but removes nothing
    for mod in tnp.modules():
        if isinstance(mod, nn.Conv2d):
            torch_prune.ln_structured(mod, "weight", amount=0.5, n=1, dim=0)
            torch_prune.remove(mod, "weight")
    variants["torch_nn_utils_prune_ln50"] = tnp.eval()
    rows = {}
    for k, m in variants.items():
        widths = [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]
        print(f"{k}: conv widths {sorted(set(widths))}")
        c = effdnn.cost(m, x1)
        rows[k] = {"macs": c.macs, "effective_macs": c.effective_macs, "params": c.params,
                   "mac_reduction": macs0 / c.macs}
        if test is not None:  # right after pruning, no fine-tuning (first 1,000 test images)
            with torch.inference_mode():
                rows[k]["accuracy_no_finetune"] = float((m(test[0]).argmax(1) == test[1]).float().mean())
            print(f"{k}: accuracy right after pruning {rows[k]['accuracy_no_finetune']:.3f}")
    if args.inference_form:  # every variant, the dense ones included, in effdnn's inference form
        probe = torch.randn(8, 1, 28, 28)
        for k, m in variants.items():
            fast = effdnn.optimize_for_inference(m).eval()
            with torch.inference_mode():
                if not torch.equal(fast(probe), m(probe)):
                    raise SystemExit(f"{k}: the inference form changed the outputs (a bug)")
            variants[k] = fast
        variants["dense_torch_modules"] = dense  # the dense model as trained: what the inference form saves
        rows["dense_torch_modules"] = dict(rows["dense"])
    print(f"form: {'effdnn.optimize_for_inference' if args.inference_form else 'as pruned (torch modules)'}")
    big = args.batch
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"layout: {'channels_last' if args.channels_last else 'contiguous (NCHW)'}")
    for m in variants.values():
        m.to(memory_format=layout)
    runners = dict(variants) if args.engine == "torch" else ort_runners(variants, x1, args.threads)
    print(f"engine: {args.engine}")
    if args.input == "test" and test is None:
        raise SystemExit("--input test needs --weights (a trained model and the test set)")
    print(f"input: {'the first test images' if args.input == 'test' else 'N(0, 1) noise'}")
    for bs, rounds, per in [(big, args.rounds, 3), (1, args.rounds, 30)]:
        xb = (test[0][:bs] if args.input == "test" else torch.randn(bs, 1, 28, 28)).contiguous(memory_format=layout)
        lat = rr_bench(runners, xb, rounds, per)
        for k in variants:
            tag = "big" if bs == big else "1"
            rows[k][f"ms_bs{tag}"] = lat[k]
            rows[k][f"speedup_bs{tag}"] = lat["dense"] / lat[k]
            rows[k][f"speedup_over_mac_reduction_bs{tag}"] = rows[k][f"speedup_bs{tag}"] / rows[k]["mac_reduction"]
    print(f"torch-pruning {tp_version}")
    head = f"{'variant':<34}{'MACs':>12}{'MAC red.':>9}{'ms b' + str(big):>9}{'speedup':>8}{'/MACred':>8}{'ms b1':>8}{'speedup':>8}{'/MACred':>8}"
    print(head)
    for k, r in rows.items():
        print(f"{k:<34}{r['macs']:>12,}{r['mac_reduction']:>8.2f}x{r['ms_bsbig']:>9.2f}{r['speedup_bsbig']:>7.2f}x"
              f"{r['speedup_over_mac_reduction_bsbig']:>8.2f}{r['ms_bs1']:>8.3f}{r['speedup_bs1']:>7.2f}x"
              f"{r['speedup_over_mac_reduction_bs1']:>8.2f}")
    out = os.environ.get("OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"torch_pruning": tp_version, "threads": args.threads, "engine": args.engine, "input": args.input,
                       "inference_form": args.inference_form,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
