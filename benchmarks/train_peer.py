"""train.py with diffusers' UNet2DModel (benchmarks/common.py) in place of the project's U-Net:
the same data, loss, optimizer, LR and EMA schedules, precision and checkpoints.

    python -m benchmarks.train_peer --checkpoint_path checkpoints/peer --output_dir outputs/peer

Takes train.py's flags. Its checkpoints load with evaluate.main(argv, make_model=Peer).
"""
import sys

import train
from benchmarks.common import Peer
from utils.errors import exit_on_user_error

if __name__ == "__main__":
    exit_on_user_error(lambda: train.main(sys.argv[1:], make_model=Peer))
