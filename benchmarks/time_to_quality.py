"""Time to quality: train with the defaults and measure the samples at wall-clock marks.

    python benchmarks/time_to_quality.py --marks 5 10 20
    python benchmarks/time_to_quality.py --marks 5 10 20 --model peer     # diffusers' UNet2DModel, same recipe

Runs train.py (or benchmarks/train_peer.py) on its defaults in a fresh folder, keeping a step
checkpoint every --save_every steps, and stops it with SIGTERM (which saves) at the last mark.
Each checkpoint's training time comes from the log's wall_s column; for each mark the last
checkpoint saved before it is evaluated with evaluate.py (--num_samples samples, inference.py's
default sampler unless --sampler is given), next to the real-data floor at the same sample count.
A mark after the end of the default run gets the finished model (see its train_minutes).
"""
import argparse
import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402  (after the path set-up above)
from common import Peer  # noqa: E402
from models.unet import UNet  # noqa: E402
from utils.config import SamplingConfig, add_arguments, from_args  # noqa: E402


def read_log(path):
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", type=float, nargs="+", default=[5, 10, 20], help="minutes of training")
    parser.add_argument("--save_every", type=int, default=50)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--model", choices=("ours", "peer"), default="ours",
                        help="the project's U-Net, or diffusers' UNet2DModel trained with the same recipe")
    parser.add_argument("--work_dir", default="", help="keep checkpoints and logs here (default: a temp folder)")
    parser.add_argument("train_args", nargs="*", help="extra train.py flags, after --")
    add_arguments(parser, SamplingConfig)  # how each mark's samples are drawn: the default sampling unless given
    args = parser.parse_args()
    sampling = from_args(SamplingConfig, args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ttq_"))
    ckpt, out = work / "ck", work / "out"

    # ---- train, stopping at the last mark ---------------------------------------------------
    script = "train.py" if args.model == "ours" else "benchmarks/train_peer.py"
    cmd = [sys.executable, script, "--checkpoint_path", str(ckpt), "--output_dir", str(out),
           "--save_every", str(args.save_every), "--log_every", str(args.save_every), "--keep_last", "100000",
           *args.train_args]
    log = out / "train_log.csv"
    deadline = max(args.marks) * 60
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "train_stderr.log", "w") as errors:  # the progress bar and any error message
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        while proc.poll() is None:
            rows = read_log(log)
            if rows and float(rows[-1]["wall_s"]) >= deadline:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            time.sleep(2)
    if proc.returncode not in (0, 143):
        sys.exit(f"training failed (exit {proc.returncode}); see {work / 'train_stderr.log'}")

    # ---- evaluate the checkpoint at each mark ---------------------------------------------------
    rows = [r for r in read_log(log) if Path(f"{ckpt}_step{int(r['step']):07d}").exists()]  # saved steps
    floor = evaluate.main(["--real", "--num_samples", str(args.num_samples), "--out", str(work / "real.json")])
    table = []
    for mark in args.marks:
        done = [r for r in rows if float(r["wall_s"]) <= mark * 60]
        if not done:
            continue
        step = int(done[-1]["step"])
        flags = ["--sampler", sampling.sampler, "--steps", str(sampling.steps), "--eta", str(sampling.eta),
                 "--guidance", str(sampling.guidance), "--guidance_interval", *map(str, sampling.guidance_interval),
                 "--seed", str(sampling.seed)]
        result = evaluate.main(["--checkpoint_path", f"{ckpt}_step{step:07d}", "--num_samples", str(args.num_samples),
                                *flags, "--out", str(work / f"eval_{mark:g}min.json")],
                               make_model=UNet if args.model == "ours" else Peer)
        table.append({"minutes": mark, "step": step, "train_seconds": float(done[-1]["wall_s"]), **result})
    print(f"\n{'minutes':>8s} {'trained':>8s} {'step':>6s} {'FID':>8s} {'FID/floor':>10s} {'confident':>10s}   "
          f"({args.model}, {args.num_samples} samples, {sampling.describe()}; "
          f"floor FID {floor['fid']:.4f})")
    for r in table:
        print(f"{r['minutes']:>8g} {r['train_seconds'] / 60:>8.1f} {r['step']:>6d} {r['fid']:>8.4f} "
              f"{r['fid'] / floor['fid']:>10.1f} {r['confident']:>10.3f}")
    (work / "time_to_quality.json").write_text(json.dumps({"floor": floor, "marks": table}, indent=2))
    print(f"wrote {work / 'time_to_quality.json'}")


if __name__ == "__main__":
    main()
