"""Time to quality: train with the defaults and measure the samples at wall-clock marks.

    python -m benchmarks.time_to_quality --marks 5 10 20
    python -m benchmarks.time_to_quality --marks 5 10 20 --model peer     # diffusers' UNet2DModel, same recipe

Runs train.py (or benchmarks/train_peer.py) on its defaults in a fresh folder, keeping a step
checkpoint every --save_every steps, and stops it with SIGTERM (which saves) at the last mark.
Each checkpoint's training time comes from the log's wall_s column; for each mark the last
checkpoint saved before it is evaluated with evaluate.py (--num_samples samples, inference.py's
default sampler unless --sampler is given), next to the real-data floor at the same sample count.
A mark after the end of the default run gets the finished model (see its train_minutes).
"""
import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataclasses import dataclass

import evaluate
from benchmarks.common import Peer
from models.unet import UNet
from utils.config import SamplingConfig, check_fields, from_args, option, parse_flags

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Flags:
    marks: tuple = option((5.0, 10.0, 20.0), "minutes of training at which to measure", bounds="(0, inf)")
    save_every: int = option(50, "a checkpoint every this many steps", bounds="[1, inf)")
    num_samples: int = option(1000, "samples per evaluation", bounds="[1, inf)")
    model: str = option("ours", "the project's U-Net, or diffusers' UNet2DModel trained with the same recipe",
                        choices=("ours", "peer"))
    work_dir: str = option("", "keep checkpoints and logs here (default: a temp folder)")

    def __post_init__(self):
        check_fields(self)


def read_log(path):
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def main():
    argv = sys.argv[1:]
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    flags, _ = parse_flags(__doc__.splitlines()[0] + " Extra train.py flags go after --.", [Flags, SamplingConfig], own)
    args, sampling = from_args(Flags, flags), from_args(SamplingConfig, flags)  # sampling: the default unless given
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ttq_"))
    ckpt, out = work / "ck", work / "out"

    # ---- train, stopping at the last mark ---------------------------------------------------
    script = ["train.py"] if args.model == "ours" else ["-m", "benchmarks.train_peer"]
    cmd = [sys.executable, *script, "--checkpoint_path", str(ckpt), "--output_dir", str(out),
           "--save_every", str(args.save_every), "--log_every", str(args.save_every), "--keep_last", "100000",
           *train_args]
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
